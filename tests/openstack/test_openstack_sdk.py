"""openstacksdk's network proxy against a real `cthm serve`: Neutron's conntrack helper CRUD
flow and the status codes its error handling maps to exceptions."""

from __future__ import annotations

import uuid

import pytest
from openstack import exceptions
from openstack.connection import Connection
from openstack.network.v2.router import Router

from cthm.testing.service import ServerProcess


def _router(conn: Connection) -> Router:
    return conn.network.create_router(name=f"r-{uuid.uuid4().hex[:8]}")


def _router_helpers(server: ServerProcess, conn: Connection, router_id: str) -> list[object]:
    # The SDK's Router has no conntrack_helpers attribute: read the body it received.
    response = conn.network.get(f"/routers/{router_id}")
    exceptions.raise_from_response(response)
    helpers: list[object] = response.json()["router"]["conntrack_helpers"]
    return helpers


def test_crud_flow(server: ServerProcess, conn: Connection) -> None:
    router = _router(conn)
    assert router.id in {r.id for r in conn.network.routers()}

    created = conn.network.create_conntrack_helper(router, helper="tftp", protocol="udp", port=69)
    assert (created.helper, created.protocol, created.port) == ("tftp", "udp", 69)
    assert created.router_id == router.id

    listed = list(conn.network.conntrack_helpers(router))
    assert [(h.id, h.helper, h.protocol, h.port) for h in listed] == [
        (created.id, "tftp", "udp", 69)
    ]

    updated = conn.network.update_conntrack_helper(created, router, port=6969)
    assert (updated.id, updated.port) == (created.id, 6969)

    shown = conn.network.get_conntrack_helper(created.id, router.id)
    assert (shown.helper, shown.protocol, shown.port) == ("tftp", "udp", 6969)
    # The SDK sends no direction: the binding is Neutron's kind, ingress.
    assert _router_helpers(server, conn, router.id) == [
        {
            "id": created.id,
            "protocol": "udp",
            "port": 6969,
            "helper": "tftp",
            "direction": "ingress",
        }
    ]

    conn.network.delete_conntrack_helper(created, router, ignore_missing=False)
    with pytest.raises(exceptions.ResourceNotFound):
        conn.network.get_conntrack_helper(created.id, router.id)
    assert list(conn.network.conntrack_helpers(router)) == []
    assert _router_helpers(server, conn, router.id) == []


def test_duplicate_is_conflict(conn: Connection) -> None:
    router = _router(conn)
    conn.network.create_conntrack_helper(router, helper="tftp", protocol="udp", port=69)
    with pytest.raises(exceptions.ConflictException) as raised:
        conn.network.create_conntrack_helper(router, helper="tftp", protocol="udp", port=69)
    assert raised.value.status_code == 409
    assert len(list(conn.network.conntrack_helpers(router))) == 1


@pytest.mark.parametrize(
    "attrs",
    [
        {"helper": "no-such-helper", "protocol": "udp", "port": 69},
        {"helper": "tftp", "protocol": "udp", "port": 0},
        {"helper": "tftp", "protocol": "udp", "port": 65536},
        {"helper": "tftp", "protocol": "sctp", "port": 69},
    ],
    ids=["helper", "port-0", "port-65536", "protocol"],
)
def test_invalid_binding_is_bad_request(conn: Connection, attrs: dict[str, object]) -> None:
    router = _router(conn)
    with pytest.raises(exceptions.BadRequestException) as raised:
        conn.network.create_conntrack_helper(router, **attrs)
    assert raised.value.status_code == 400
    assert list(conn.network.conntrack_helpers(router)) == []


def test_update_to_bad_port_is_bad_request(conn: Connection) -> None:
    router = _router(conn)
    created = conn.network.create_conntrack_helper(router, helper="tftp", protocol="udp", port=69)
    with pytest.raises(exceptions.BadRequestException):
        conn.network.update_conntrack_helper(created, router, port=70000)
    assert conn.network.get_conntrack_helper(created.id, router.id).port == 69


def test_unknown_router_is_not_found(conn: Connection) -> None:
    unknown = str(uuid.uuid4())
    with pytest.raises(exceptions.ResourceNotFound):
        conn.network.create_conntrack_helper(unknown, helper="tftp", protocol="udp", port=69)
    with pytest.raises(exceptions.ResourceNotFound):
        list(conn.network.conntrack_helpers(unknown))
    with pytest.raises(exceptions.ResourceNotFound):
        conn.network.get_conntrack_helper(str(uuid.uuid4()), unknown)
