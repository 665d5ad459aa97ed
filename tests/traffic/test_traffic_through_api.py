"""End to end: a real `cthm serve` (API + in-process agent), bindings created over HTTP, and
real active-mode FTP and TFTP through a strict stateful NAT router.

Before the bindings exist both transfers fail; after POSTing them to the API they succeed with
the served bytes, and the kernel's conntrack shows the helpers on the router's connections.
"""

from __future__ import annotations

import time

import httpx
import pytest

from cthm.testing import HelperAssigner, HelperTraffic, Topology, run_in_namespace
from cthm.testing.service import ServerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.traffic]

SETTLE_TIMEOUT = 10.0


def wait_active(client: httpx.Client, router_id: str, ids: list[str]) -> dict[str, str]:
    """Polls (bounded) until every binding is ACTIVE; returns the last statuses seen."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/v2.0/routers/{router_id}/conntrack_helpers").json()
        statuses = {b["id"]: b["status"] for b in body["conntrack_helpers"]}
        if all(statuses.get(i) == "ACTIVE" for i in ids):
            return statuses
        time.sleep(0.02)
    return statuses


@pytest.fixture
def assign_helpers(service: ServerProcess) -> HelperAssigner:
    def assign(topology: Topology) -> None:
        # As the server's admin: the token its first start wrote into its data directory.
        with httpx.Client(
            base_url=service.url, timeout=5.0, headers=service.auth_headers()
        ) as client:
            created = client.post(
                "/v2.0/routers",
                json={
                    "router": {
                        "name": "edge",
                        "project_id": "traffic",
                        "namespace": topology.router_ns,
                    }
                },
            )
            assert created.status_code == 201, created.text
            router_id = created.json()["router"]["id"]
            ids = []
            for protocol, port, helper in (("tcp", 21, "ftp"), ("udp", 69, "tftp")):
                response = client.post(
                    f"/v2.0/routers/{router_id}/conntrack_helpers",
                    json={
                        "conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}
                    },
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["conntrack_helper"]["id"])
            statuses = wait_active(client, router_id, ids)
            assert all(statuses.get(i) == "ACTIVE" for i in ids), (statuses, service.logs())
            router = client.get(f"/v2.0/routers/{router_id}").json()["router"]
            assert router["status"] == "ACTIVE", router
            assert sorted((h["protocol"], h["port"]) for h in router["conntrack_helpers"]) == [
                ("tcp", 21),
                ("udp", 69),
            ]

    return assign


def test_helpers_created_through_the_api_make_active_ftp_and_tftp_work(
    helper_traffic: HelperTraffic, assign_helpers: HelperAssigner, topology: Topology, backend: str
) -> None:
    helper_traffic.prove(assign_helpers)
    # And the helpers came from the backend asked for, not from the other one.
    nft_tables = run_in_namespace(topology.router_ns, ["nft", "list", "tables"]).stdout.splitlines()
    raw = run_in_namespace(topology.router_ns, ["iptables-save", "-t", "raw"]).stdout
    if backend == "nftables":
        assert "table inet cthm" in nft_tables  # whole lines: not cthm_test_fw
        assert "cthm-PREROUTING" not in raw
    else:
        assert "table inet cthm" not in nft_tables
        assert "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp" in raw
        assert "-A cthm-PREROUTING -p udp -m udp --dport 69 -j CT --helper tftp" in raw
