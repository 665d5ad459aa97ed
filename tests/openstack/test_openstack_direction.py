"""cthm's `direction` field beside the real OpenStack clients, which know nothing of it: a
router holding an output binding (made through cthm's API) still lists, shows, updates and
deletes through openstacksdk and the `openstack` command, and the clients' own creations are
ingress, as Neutron's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from openstack import exceptions
from openstack.connection import Connection
from osclients import Cli

HELPER = ("network", "l3", "conntrack", "helper")


def _router_id(conn: Connection) -> str:
    router_id: str = conn.network.create_router(name=f"d-{uuid.uuid4().hex[:8]}").id
    return router_id


def _raw_create(conn: Connection, router_id: str, **fields: Any) -> dict[str, Any]:
    """A binding made with cthm's extra field, through the SDK's authenticated session."""
    response = conn.network.post(
        f"/routers/{router_id}/conntrack_helpers", json={"conntrack_helper": fields}
    )
    exceptions.raise_from_response(response)
    created: dict[str, Any] = response.json()["conntrack_helper"]
    return created


def _directions(conn: Connection, router_id: str) -> dict[str, str]:
    response = conn.network.get(f"/routers/{router_id}/conntrack_helpers")
    exceptions.raise_from_response(response)
    return {h["id"]: h["direction"] for h in response.json()["conntrack_helpers"]}


def test_sdk_works_beside_an_output_binding(conn: Connection) -> None:
    router_id = _router_id(conn)
    output = _raw_create(conn, router_id, protocol="tcp", port=21, helper="ftp", direction="output")
    assert output["direction"] == "output"
    # The SDK's own create on the same protocol/port: another direction, so no conflict.
    ingress = conn.network.create_conntrack_helper(router_id, helper="ftp", protocol="tcp", port=21)

    listed = sorted(
        (h.id, h.helper, h.protocol, h.port) for h in conn.network.conntrack_helpers(router_id)
    )
    assert listed == sorted([(output["id"], "ftp", "tcp", 21), (ingress.id, "ftp", "tcp", 21)])
    shown = conn.network.get_conntrack_helper(output["id"], router_id)
    assert (shown.helper, shown.protocol, shown.port) == ("ftp", "tcp", 21)

    # An update that says nothing of direction keeps it.
    conn.network.update_conntrack_helper(output["id"], router_id, port=2121)
    assert conn.network.get_conntrack_helper(output["id"], router_id).port == 2121
    assert _directions(conn, router_id) == {output["id"]: "output", ingress.id: "ingress"}

    with pytest.raises(exceptions.ConflictException):
        conn.network.create_conntrack_helper(router_id, helper="ftp", protocol="tcp", port=21)
    conn.network.delete_conntrack_helper(output["id"], router_id, ignore_missing=False)
    assert _directions(conn, router_id) == {ingress.id: "ingress"}


def test_cli_works_beside_an_output_binding(cli: Cli, conn: Connection) -> None:
    router_id = _router_id(conn)
    output = _raw_create(
        conn, router_id, protocol="udp", port=69, helper="tftp", direction="output"
    )

    listed = cli(*HELPER, "list", router_id, "-f", "json").json()
    assert listed == [
        {
            "ID": output["id"],
            "Router ID": router_id,
            "Helper": "tftp",
            "Protocol": "udp",
            "Port": 69,
        }
    ]
    shown = cli(*HELPER, "show", router_id, output["id"], "-f", "json").json()
    assert (shown["id"], shown["helper"], shown["port"]) == (output["id"], "tftp", 69)

    updated = cli(*HELPER, "set", "--port", "6969", router_id, output["id"])
    assert updated.returncode == 0, updated.stderr
    assert _directions(conn, router_id) == {output["id"]: "output"}

    created = cli(
        *HELPER, "create", "--helper", "tftp", "--protocol", "udp", "--port", "6969",
        router_id, "-f", "json",
    ).json()  # fmt: skip
    assert _directions(conn, router_id) == {output["id"]: "output", created["id"]: "ingress"}

    deleted = cli(*HELPER, "delete", router_id, output["id"])
    assert deleted.returncode == 0, deleted.stderr
    assert _directions(conn, router_id) == {created["id"]: "ingress"}
