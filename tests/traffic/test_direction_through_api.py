"""Binding direction end to end, with real traffic, for both backends.

A real `cthm serve` (API + in-process agent, `--backend nftables|iptables`) manages the router
of the traffic topology. The router namespace itself runs active FTP and TFTP clients against
the servers, behind its strict INPUT firewall (`router_traffic`), while the client namespace
runs them through the router (`helper_traffic`). Bindings with `"direction": "output"` make
the router's own transfers work and leave forwarded ones without helpers; ingress bindings
(the default) do the opposite; both directions on the same port coexist.

Every failure-proof runs concurrently with another probe: a lost TFTP reply costs ~2 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cthm.testing import HelperTraffic, Topology, concurrently, run_in_namespace
from cthm.testing.service import ServerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.traffic]

SETTLE_TIMEOUT = 10.0
BINDINGS = (("tcp", 21, "ftp"), ("udp", 69, "tftp"))


class Edge:
    """The topology's router as a cthm router, driven over HTTP as the server's admin."""

    def __init__(self, service: ServerProcess, topology: Topology) -> None:
        self.service = service
        self.client = httpx.Client(
            base_url=service.url, timeout=5.0, headers=service.auth_headers()
        )
        body = {
            "router": {"name": "edge", "project_id": "traffic", "namespace": topology.router_ns}
        }
        created = self.client.post("/v2.0/routers", json=body)
        assert created.status_code == 201, created.text
        self.router_id: str = created.json()["router"]["id"]
        self.url = f"/v2.0/routers/{self.router_id}"

    def bind_ftp_and_tftp(self, direction: str | None) -> list[str]:
        """POSTs tcp/21 ftp and udp/69 tftp (no direction field when None), waits for ACTIVE."""
        ids = []
        for protocol, port, helper in BINDINGS:
            fields: dict[str, object] = {"protocol": protocol, "port": port, "helper": helper}
            if direction is not None:
                fields["direction"] = direction
            response = self.client.post(
                f"{self.url}/conntrack_helpers", json={"conntrack_helper": fields}
            )
            assert response.status_code == 201, response.text
            binding = response.json()["conntrack_helper"]
            assert binding["direction"] == (direction or "ingress"), binding
            ids.append(binding["id"])
        self.wait_active(ids)
        return ids

    def wait_active(self, ids: list[str]) -> None:
        """Polls (bounded) until every binding in `ids` is ACTIVE."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        statuses: dict[str, str] = {}
        for _ in range(int(SETTLE_TIMEOUT / 0.02) + 1):
            statuses = {b["id"]: b["status"] for b in self.bindings()}
            if all(statuses.get(i) == "ACTIVE" for i in ids) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert all(statuses.get(i) == "ACTIVE" for i in ids), (statuses, self.service.logs())

    def bindings(self) -> list[dict[str, Any]]:
        response = self.client.get(f"{self.url}/conntrack_helpers")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["conntrack_helpers"]
        return items

    def router_helpers(self) -> list[tuple[str, int, str, str]]:
        router = self.client.get(self.url).json()["router"]
        return sorted(
            (h["protocol"], h["port"], h["helper"], h["direction"])
            for h in router["conntrack_helpers"]
        )

    def kernel_actual(self) -> list[tuple[str, int, str, str]]:
        """What the agent read back from the kernel, as (protocol, port, helper, direction)."""
        state = self.client.get(f"{self.url}/kernel_state").json()["kernel_state"]
        assert state["in_sync"] is True, state
        return sorted(
            (a["protocol"], a["port"], a["helper"], a["direction"]) for a in state["actual"]
        )

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def edge(service: ServerProcess, topology: Topology) -> Iterator[Edge]:
    e = Edge(service, topology)
    try:
        yield e
    finally:
        e.close()


def expected(*directions: str) -> list[tuple[str, int, str, str]]:
    return sorted((p, port, h, d) for p, port, h in BINDINGS for d in directions)


def kernel_rules(topology: Topology, backend: str) -> tuple[str, str]:
    """The router's `inet cthm` nft table (empty if none) and its iptables raw table."""
    nft = run_in_namespace(
        topology.router_ns, ["nft", "list", "table", "inet", "cthm"], check=False
    ).stdout
    raw = run_in_namespace(topology.router_ns, ["iptables-save", "-t", "raw"]).stdout
    # The helpers came from the backend asked for, not from the other one.
    if backend == "nftables":
        assert "cthm-" not in raw, raw
    else:
        assert nft == "", nft
    return nft, raw


def test_output_bindings_make_router_originated_ftp_and_tftp_work(
    edge: Edge,
    helper_traffic: HelperTraffic,
    router_traffic: HelperTraffic,
    topology: Topology,
    backend: str,
) -> None:
    # cthm manages the router, no binding yet: the router's own transfers lack the helpers.
    router_traffic.assert_helpers_missing()

    edge.bind_ftp_and_tftp("output")
    assert edge.router_helpers() == expected("output")
    assert edge.kernel_actual() == expected("output")
    # The router's own transfers now work; forwarded ones still get no helper.
    concurrently(router_traffic.assert_helpers_working, helper_traffic.assert_helpers_missing)

    nft, raw = kernel_rules(topology, backend)
    if backend == "nftables":
        assert "hook output priority filter" in nft, nft
        assert "prerouting" not in nft, nft
    else:
        assert "-A OUTPUT -j cthm-OUTPUT" in raw, raw
        assert "-A cthm-OUTPUT -p tcp -m tcp --dport 21 -j CT --helper ftp" in raw, raw
        assert "-A cthm-OUTPUT -p udp -m udp --dport 69 -j CT --helper tftp" in raw, raw
        # cthm-PREROUTING may stay as the backend's (empty) anchor, but holds no helper rule.
        assert "-A cthm-PREROUTING -p" not in raw, raw


def test_ingress_bindings_leave_router_originated_transfers_without_helpers(
    edge: Edge,
    helper_traffic: HelperTraffic,
    router_traffic: HelperTraffic,
    topology: Topology,
    backend: str,
) -> None:
    # The default direction is ingress: forwarded transfers work, the router's own do not.
    edge.bind_ftp_and_tftp(None)
    assert edge.kernel_actual() == expected("ingress")
    concurrently(helper_traffic.assert_helpers_working, router_traffic.assert_helpers_missing)

    # The same protocol/port may have a binding per direction: with both, both work.
    edge.bind_ftp_and_tftp("output")
    assert edge.router_helpers() == expected("ingress", "output")
    assert edge.kernel_actual() == expected("ingress", "output")
    concurrently(helper_traffic.assert_helpers_working, router_traffic.assert_helpers_working)

    nft, raw = kernel_rules(topology, backend)
    if backend == "nftables":
        assert "hook prerouting priority filter" in nft, nft
        assert "hook output priority filter" in nft, nft
    else:
        for chain in ("cthm-PREROUTING", "cthm-OUTPUT"):
            assert f"-A {chain} -p tcp -m tcp --dport 21 -j CT --helper ftp" in raw, raw
            assert f"-A {chain} -p udp -m udp --dport 69 -j CT --helper tftp" in raw, raw
