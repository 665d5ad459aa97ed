"""Several hosts, proved with real traffic (issue 12): `cthm serve --no-agent` and one
`cthm agent run` per host, each host a FakeHost (its own mount namespace and /run/netns).

- R1, a router whose namespace exists on host A only: placed on A alone.
- R2, an HA router: the same `qrouter-<uuid>` name on hosts A and B, each name a different
  kernel namespace (its own client/router/server topology), as keepalived's copies are.

Before the bindings exist, active FTP and TFTP fail through R1 and through both copies of R2;
after POSTing ftp tcp/21 and tftp udp/69 to the API and waiting until each router is ACTIVE (R2:
on both hosts), both transfers work through every copy: each host's agent wrote its own copy.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.testing import (
    FakeHost,
    HelperTraffic,
    NamespaceFactory,
    Topology,
    build_topology,
    concurrently,
    missing_nat_helpers,
    run_in_namespace,
    start_ftp_server,
    start_tftp_server,
    write_random_file,
)
from cthm.testing.service import ServerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.traffic]

FTP_FILE = "payload-ftp.bin"
TFTP_FILE = "payload-tftp.bin"
FTP_SIZE = 64 * 1024 + 17
TFTP_SIZE = 16 * 1024 + 123
BINDINGS = (("tcp", 21, "ftp"), ("udp", 69, "tftp"))
HOST_A, HOST_B = "node-a", "node-b"
# Registration, the first list and the reports (every second here) of two fresh agents.
SETTLE_TIMEOUT = 30.0
POLL = 0.1


@dataclass(frozen=True)
class Copy:
    """One kernel copy of a router: the host that shows it, and the traffic through it."""

    host: str
    traffic: HelperTraffic


@pytest.fixture(params=["nftables", "iptables"])
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServerProcess]:
    """The API alone: every router is applied by the node agents."""
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=("--no-agent",)) as server:
        yield server


def client_of(api: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=api.url, timeout=10.0, headers=api.auth_headers())


def agent_token_file(api: ServerProcess, host: str, directory: Path) -> Path:
    """An agent token limited to `host`, made by the admin, its secret in a 0600 file."""
    body = {"auth_token": {"project_id": "agents", "roles": ["agent"], "host": host}}
    with client_of(api) as client:
        response = client.post("/v2.0/auth_tokens", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["auth_token"]["host"] == host
    path = directory / f"{host}.token"
    path.touch(mode=0o600)
    path.write_text(response.json()["auth_token"]["token"], encoding="ascii")
    return path


def traffic_through(
    stack: ExitStack, netns: NamespaceFactory, label: str, tmp_path: Path
) -> HelperTraffic:
    """A client/router/server topology labelled `label`, with FTP and TFTP servers."""
    topology: Topology = build_topology(netns, label=label)
    servers = []
    for kind, start, name, size in (
        ("ftp", start_ftp_server, FTP_FILE, FTP_SIZE),
        ("tftp", start_tftp_server, TFTP_FILE, TFTP_SIZE),
    ):
        root = tmp_path / f"{label}{kind}-root"
        root.mkdir()
        write_random_file(root, name, size)
        state = tmp_path / f"{label}{kind}-state"
        servers.append(
            stack.enter_context(
                start(topology.server_ns, topology.server_addr, root, state_dir=state)
            )
        )
    return HelperTraffic(topology, servers[0], servers[1], FTP_FILE, TFTP_FILE)


def create_router(api: ServerProcess, name: str, namespace: str) -> str:
    router = {"name": name, "project_id": "traffic", "namespace": namespace}
    with client_of(api) as client:
        response = client.post("/v2.0/routers", json={"router": router})
    assert response.status_code == 201, response.text
    router_id: str = response.json()["router"]["id"]
    return router_id


def bind(api: ServerProcess, router_id: str) -> None:
    with client_of(api) as client:
        for protocol, port, helper in BINDINGS:
            response = client.post(
                f"/v2.0/routers/{router_id}/conntrack_helpers",
                json={"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}},
            )
            assert response.status_code == 201, response.text


def wait_active(
    api: ServerProcess, router_id: str, hosts: list[str], bindings: int, logs: Callable[[], str]
) -> dict[str, Any]:
    """Polls (bounded) until the router is ACTIVE on exactly `hosts`, with `bindings` bindings
    all ACTIVE and every host's kernel summary in sync; returns its kernel_state."""
    router: dict[str, Any] = {}
    helpers: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    deadline = time.monotonic() + SETTLE_TIMEOUT
    with client_of(api) as client:
        for _ in range(int(SETTLE_TIMEOUT / POLL) + 1):
            router = client.get(f"/v2.0/routers/{router_id}").json()["router"]
            url = f"/v2.0/routers/{router_id}/conntrack_helpers"
            helpers = client.get(url).json()["conntrack_helpers"]
            state = client.get(f"/v2.0/routers/{router_id}/kernel_state").json()
            per_host = state.get("kernel_state", {}).get("hosts", [])
            if (
                router["status"] == "ACTIVE"
                and router.get("hosts") == hosts
                and len(helpers) == bindings
                and all(b["status"] == "ACTIVE" for b in helpers)
                and [h["host"] for h in per_host] == hosts
                and all(h["in_sync"] and h["status"] == "ACTIVE" for h in per_host)
            ):
                return state
            if time.monotonic() > deadline:
                break
            time.sleep(POLL)
    raise AssertionError(
        f"router {router_id} not ACTIVE on {hosts} within {SETTLE_TIMEOUT}s:\n"
        f"router {router}\nbindings {helpers}\nkernel_state {state}\napi:\n{api.logs()}\n{logs()}"
    )


def has_cthm_table(namespace: str, backend: str) -> bool:
    """Whether the real namespace holds cthm's rules (read from the root mount namespace)."""
    if backend == "nftables":
        tables = run_in_namespace(namespace, ["nft", "list", "tables"]).stdout.splitlines()
        return "table inet cthm" in tables
    raw = run_in_namespace(namespace, ["iptables-save", "-t", "raw"]).stdout
    return "-j CT --helper ftp" in raw


def test_a_router_on_one_host_and_an_ha_router_on_two_get_their_helpers_on_every_copy(
    netns: NamespaceFactory, api: ServerProcess, backend: str, tmp_path: Path
) -> None:
    missing = missing_nat_helpers()
    if missing:
        reason = f"kernel lacks {', '.join(missing)} (active FTP/TFTP through NAT need them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with ExitStack() as stack:
        r1 = traffic_through(stack, netns, "a1", tmp_path)
        r2a = traffic_through(stack, netns, "a2", tmp_path)
        r2b = traffic_through(stack, netns, "b2", tmp_path)
        ha_namespace = f"qrouter-{uuid.uuid4()}"

        host_a = stack.enter_context(FakeHost(HOST_A, tmp_path / "host-a").start())
        host_b = stack.enter_context(FakeHost(HOST_B, tmp_path / "host-b").start())
        host_a.add_namespace(r1.topology.router_ns, r1.topology.router_ns)
        host_a.add_namespace(ha_namespace, r2a.topology.router_ns)
        host_b.add_namespace(ha_namespace, r2b.topology.router_ns)
        assert host_a.namespaces() == sorted([r1.topology.router_ns, ha_namespace])
        assert host_b.namespaces() == [ha_namespace]

        agents = [
            host.start_agent(api.url, agent_token_file(api, host.name, tmp_path), backend=backend)
            for host in (host_a, host_b)
        ]

        def logs() -> str:
            return "\n".join(f"agent {a.pid}:\n{a.log_tail()}" for a in agents)

        r1_id = create_router(api, "r1", r1.topology.router_ns)
        r2_id = create_router(api, "r2", ha_namespace)
        # Placed by discovery, each copy applied (an empty table: no helper yet).
        wait_active(api, r1_id, [HOST_A], 0, logs)
        wait_active(api, r2_id, [HOST_A, HOST_B], 0, logs)

        copies = [Copy(HOST_A, r1), Copy(HOST_A, r2a), Copy(HOST_B, r2b)]
        concurrently(*(c.traffic.assert_helpers_missing for c in copies))

        bind(api, r1_id)
        bind(api, r2_id)
        state = wait_active(api, r1_id, [HOST_A], len(BINDINGS), logs)
        assert state["kernel_state"]["in_sync"] is True
        state = wait_active(api, r2_id, [HOST_A, HOST_B], len(BINDINGS), logs)
        assert state["kernel_state"]["in_sync"] is True

        concurrently(*(c.traffic.assert_helpers_working for c in copies))
        for copy in copies:
            assert has_cthm_table(copy.traffic.topology.router_ns, backend), copy
        assert all(a.alive() for a in agents), logs()
