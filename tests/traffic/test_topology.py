"""The traffic harness's topology is what the helper tests rely on: a strict NAT router."""

from __future__ import annotations

import pytest

from cthm.testing import (
    RunningServer,
    Topology,
    nft_apply,
    run_in_namespace,
    tcp_probe,
)

pytestmark = [pytest.mark.traffic, pytest.mark.kernel]


def _sysctl(namespace: str, key: str) -> str:
    return run_in_namespace(namespace, ["sysctl", "-n", key]).stdout.strip()


def test_only_the_router_forwards_and_the_server_cannot_route_back(topology: Topology) -> None:
    assert _sysctl(topology.router_ns, "net.ipv4.ip_forward") == "1"
    assert _sysctl(topology.client_ns, "net.ipv4.ip_forward") == "0"
    assert _sysctl(topology.server_ns, "net.ipv4.ip_forward") == "0"
    back = run_in_namespace(
        topology.server_ns, ["ip", "route", "get", topology.client_addr], check=False
    )
    assert back.returncode != 0, back.stdout


def test_firewall_lives_in_its_own_table_not_in_cthms(topology: Topology) -> None:
    tables = run_in_namespace(topology.router_ns, ["nft", "list", "tables"]).stdout.split("\n")
    assert f"table inet {topology.firewall_table}" in tables
    assert "table inet cthm" not in tables


def test_firewall_forwards_ftp_control_and_drops_other_new_connections(
    topology: Topology, ftp_server: RunningServer
) -> None:
    # Port 2121 is closed on the server: unfiltered it refuses (the router, whose own output
    # is not filtered, sees that); from the client it times out, so the firewall dropped it.
    assert tcp_probe(topology.router_ns, topology.server_addr, 2121) == "refused"
    assert tcp_probe(topology.client_ns, topology.server_addr, 2121) == "timeout"
    assert tcp_probe(topology.client_ns, topology.server_addr, ftp_server.port) == "connected"


def test_server_cannot_open_connections_to_the_client_side(topology: Topology) -> None:
    # Even with a route back, the forward policy drops new connections from the server side.
    run_in_namespace(
        topology.server_ns,
        ["ip", "route", "add", topology.client_net, "via", topology.router_server_addr],
    )
    assert tcp_probe(topology.server_ns, topology.client_addr, 21) == "timeout"
    # ...while the client itself answers when asked from the router (a refusal: nothing listens).
    assert tcp_probe(topology.router_ns, topology.client_addr, 21) == "refused"


def test_helper_table_can_coexist_with_the_firewall(topology: Topology) -> None:
    nft_apply(topology.router_ns, "table inet cthm { }\n")
    tables = run_in_namespace(topology.router_ns, ["nft", "list", "tables"]).stdout.split("\n")
    assert {"table inet cthm", f"table inet {topology.firewall_table}"} <= set(tables)
