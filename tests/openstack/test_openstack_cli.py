"""`openstack network l3 conntrack helper create|list|show|set|delete` (python-openstackclient)
against a real `cthm serve`: Neutron's CRUD flow, and the errors the operator sees."""

from __future__ import annotations

import uuid

from openstack.connection import Connection
from osclients import Cli, CliResult

HELPER = ("network", "l3", "conntrack", "helper")


def _router_id(conn: Connection) -> str:
    router_id: str = conn.network.create_router(name=f"r-{uuid.uuid4().hex[:8]}").id
    return router_id


def _router_helpers(conn: Connection, router_id: str) -> list[object]:
    helpers: list[object] = conn.network.get(f"/routers/{router_id}").json()["router"][
        "conntrack_helpers"
    ]
    return helpers


def _create(cli: Cli, router_id: str, helper: str, protocol: str, port: str) -> CliResult:
    return cli(
        *HELPER, "create", "--helper", helper, "--protocol", protocol, "--port", port,
        router_id, "-f", "json",
    )  # fmt: skip


def test_crud_flow(cli: Cli, conn: Connection) -> None:
    router_id = _router_id(conn)

    created = _create(cli, router_id, "tftp", "udp", "69").json()
    assert {k: created[k] for k in ("helper", "protocol", "port")} == {
        "helper": "tftp",
        "protocol": "udp",
        "port": 69,
    }
    helper_id = created["id"]

    listed = cli(*HELPER, "list", router_id, "-f", "json").json()
    assert listed == [
        {"ID": helper_id, "Router ID": router_id, "Helper": "tftp", "Protocol": "udp", "Port": 69}
    ]

    updated = cli(*HELPER, "set", "--port", "6969", router_id, helper_id)
    assert updated.returncode == 0, updated.stderr

    shown = cli(*HELPER, "show", router_id, helper_id, "-f", "json").json()
    assert (shown["id"], shown["port"]) == (helper_id, 6969)
    assert _router_helpers(conn, router_id) == [
        {"id": helper_id, "protocol": "udp", "port": 6969, "helper": "tftp", "direction": "ingress"}
    ]

    deleted = cli(*HELPER, "delete", router_id, helper_id)
    assert deleted.returncode == 0, deleted.stderr
    missing = cli(*HELPER, "show", router_id, helper_id)
    assert missing.returncode != 0
    assert f"Conntrack helper {helper_id} could not be found" in missing.stderr
    assert _router_helpers(conn, router_id) == []


def test_duplicate_is_refused_with_the_reason(cli: Cli, conn: Connection) -> None:
    router_id = _router_id(conn)
    first = _create(cli, router_id, "tftp", "udp", "69").json()
    again = _create(cli, router_id, "tftp", "udp", "69")
    assert again.returncode != 0
    assert "409" in again.stderr
    assert f"already has conntrack helper {first['id']}" in again.stderr
    assert len(_router_helpers(conn, router_id)) == 1


def test_bad_helper_is_refused_with_the_reason(cli: Cli, conn: Connection) -> None:
    router_id = _router_id(conn)
    refused = _create(cli, router_id, "no-such-helper", "udp", "69")
    assert refused.returncode != 0
    assert "400" in refused.stderr
    assert "unknown helper 'no-such-helper'" in refused.stderr
    assert _router_helpers(conn, router_id) == []


def test_unknown_router_is_not_found(cli: Cli) -> None:
    unknown = str(uuid.uuid4())
    listed = cli(*HELPER, "list", unknown)
    assert listed.returncode != 0
    # The CLI resolves the router first: GET by id (404), then by name (none).
    assert f"No Router found for {unknown}" in listed.stderr
