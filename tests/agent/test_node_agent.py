"""The node agent's protocol against a real API (`cthm serve --no-agent`, a real process):
registration, the watch, placement by discovery, the API going away and coming back, stop.

The kernel side is the netfilter fake (honest, transactional) and /run/netns is a temporary
directory: these tests are about what the agent asks, when, and what it leaves alone. The
real kernel end to end, with several hosts, is tests/hosts.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.agent import KernelBackend
from cthm.agent.node import NodeAgent
from cthm.agent.remote import ApiClient, ApiRefused
from cthm.domain import Assignment, Direction, HelperCatalog, Protocol
from cthm.netfilter import FakeNftables, NftablesBackend
from cthm.testing import ServerProcess
from cthm.testing.service import free_port

TIMEOUT = 15.0
FTP = Assignment(Protocol.TCP, 21, "ftp", Direction.INGRESS)
TFTP = Assignment(Protocol.UDP, 69, "tftp", Direction.INGRESS)


def wait(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 2):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert predicate(), f"not within {timeout}s: {what}"


class Env:
    """The API, an admin client, an agent token for one host, a fake kernel, a netns dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = ServerProcess(
            tmp / "data", tmp / "logs", port=free_port(), args=("--no-agent",)
        )
        self.server.start()
        self.admin = httpx.Client(
            base_url=self.server.url, headers=self.server.auth_headers(), timeout=10
        )
        self.host = f"node-{secrets.token_hex(3)}"
        self.token = self._agent_token(self.host)
        self.kernel = FakeNftables()
        self.netns = tmp / "netns"
        self.netns.mkdir()
        self.backend: NftablesBackend | None = None
        self.before_start: Callable[[NftablesBackend], None] | None = None
        self.nodes: list[NodeAgent] = []

    def _agent_token(self, host: str) -> str:
        body = {"auth_token": {"project_id": "agents", "roles": ["agent"], "host": host}}
        answer = self.admin.post("/v2.0/auth_tokens", json=body)
        assert answer.status_code == 201, answer.text
        secret: str = answer.json()["auth_token"]["token"]
        return secret

    def make_backend(
        self, deployment_id: str, namespaces: list[str]
    ) -> tuple[KernelBackend, tuple[KernelBackend, ...], dict[str, Any]]:
        self.backend = NftablesBackend(self.kernel, owner=deployment_id)
        if self.before_start is not None:
            self.before_start(self.backend)
        return (
            self.backend,
            (),
            {
                "backend": "nftables",
                "chosen_by": "configuration",
                "reason": "test",
                "retired_backends": [],
            },
        )

    def node(self, *, report_interval: float = 3600.0, token: str | None = None) -> NodeAgent:
        node = NodeAgent(
            ApiClient(self.server.url, token or self.token, timeout=5.0),
            self.host,
            self.make_backend,
            HelperCatalog(),
            netns_dir=self.netns,
            report_interval=report_interval,
            resync_interval=3600.0,  # never during a test: what arrives came by watch or placement
        )
        self.nodes.append(node)
        return node

    def place(self, namespace: str) -> None:
        """The namespace exists on this host (for discovery and for the fake kernel)."""
        if namespace not in self.kernel.namespaces:
            self.kernel.add_namespace(namespace)
        (self.netns / namespace).touch()

    def unplace(self, namespace: str) -> None:
        """Gone from this host's /run/netns (moved to another host): the kernel keeps it."""
        (self.netns / namespace).unlink()

    def create_router(self, namespace: str) -> str:
        body = {"router": {"name": namespace, "project_id": "p1", "namespace": namespace}}
        answer = self.admin.post("/v2.0/routers", json=body)
        assert answer.status_code == 201, answer.text
        router_id: str = answer.json()["router"]["id"]
        return router_id

    def bind(self, router_id: str, protocol: str, port: int, helper: str) -> str:
        body = {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}
        answer = self.admin.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)
        assert answer.status_code == 201, answer.text
        binding_id: str = answer.json()["conntrack_helper"]["id"]
        return binding_id

    def router(self, router_id: str) -> dict[str, Any]:
        answer = self.admin.get(f"/v2.0/routers/{router_id}")
        assert answer.status_code == 200, answer.text
        router: dict[str, Any] = answer.json()["router"]
        return router

    def table(self, namespace: str) -> set[Assignment] | None:
        """What the fake kernel holds in cthm's table there; None: no table."""
        reader = NftablesBackend(self.kernel)
        held = reader.read(namespace)
        return None if held is None else set(held.assignments)

    def writes(self) -> int:
        """Transactions committed in the fake kernel (not listings, not dry runs)."""
        return sum(
            1
            for run in self.kernel.runs
            if run.ok and not run.dry_run and not run.commands.lstrip().startswith("list")
        )

    def close(self) -> None:
        for node in self.nodes:
            node.stop(5.0)
        self.admin.close()
        if self.server.process is not None and self.server.process.poll() is None:
            self.server.stop()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    made = Env(tmp_path)
    try:
        yield made
    finally:
        made.close()


def names(prefix: str = "tna") -> str:
    return f"qrouter-{prefix}-{secrets.token_hex(4)}"


def agent_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cthm-agent")]


def test_a_binding_made_through_the_api_reaches_the_kernel_by_the_watch(env: Env) -> None:
    namespace = names()
    router_id = env.create_router(namespace)
    env.place(namespace)
    node = env.node()  # heartbeats only at start and on namespace changes: the watch delivers
    assert node.start()
    wait(lambda: router_id in node.placed, "the router placed on the host")
    wait(lambda: env.table(namespace) == set(), "the router's (empty) table applied")
    wait(lambda: env.router(router_id)["status"] == "ACTIVE", "the router ACTIVE")
    assert env.router(router_id)["hosts"] == [env.host]

    env.bind(router_id, "tcp", 21, "ftp")
    wait(lambda: env.table(namespace) == {FTP}, "the binding in the kernel")
    assert node.watcher is not None
    assert node.watcher.counters()["events"] >= 1
    wait(
        lambda: all(
            b["status"] == "ACTIVE"
            for b in env.admin.get(f"/v2.0/routers/{router_id}/conntrack_helpers").json()[
                "conntrack_helpers"
            ]
        ),
        "the binding ACTIVE",
    )
    # The kernel summary sent with the report is this host's entry in kernel_state.
    state = env.admin.get(f"/v2.0/routers/{router_id}/kernel_state").json()["kernel_state"]
    [entry] = state["hosts"]
    assert entry["host"] == env.host
    assert entry["in_sync"] is True
    assert entry["missing"] == []
    assert entry["unexpected"] == []


def test_api_away_leaves_the_kernel_alone_and_catches_up_when_back(env: Env) -> None:
    namespace = names()
    router_id = env.create_router(namespace)
    env.bind(router_id, "tcp", 21, "ftp")
    env.place(namespace)
    node = env.node(report_interval=0.5)
    assert node.start()
    wait(lambda: env.table(namespace) == {FTP}, "the binding in the kernel")
    watcher, agent = node.watcher, node.agent
    assert watcher is not None
    assert agent is not None
    relists = watcher.counters()["relists"]
    writes = env.writes()

    env.server.stop()
    wait(lambda: not watcher.counters()["connected"], "the watch disconnected")
    # Reconciles while the API is away read nothing, so they change nothing.
    agent.enqueue([router_id])
    time.sleep(1.0)
    assert env.table(namespace) == {FTP}
    assert env.writes() == writes
    assert agent.kernel_state(router_id) is not None  # not taken for deleted

    env.server.start()  # the same port and database
    env.admin.close()
    env.admin = httpx.Client(base_url=env.server.url, headers=env.server.auth_headers(), timeout=10)
    env.bind(router_id, "udp", 69, "tftp")
    wait(lambda: env.table(namespace) == {FTP, TFTP}, "the change made after the restart")
    wait(lambda: watcher.counters()["relists"] > relists, "listed again on reconnect")
    wait(lambda: watcher.counters()["connected"], "watching again")


def test_placement_follows_the_namespace(env: Env) -> None:
    namespace = names()
    router_id = env.create_router(namespace)
    env.bind(router_id, "tcp", 21, "ftp")
    node = env.node()
    assert node.start()
    agent = node.agent
    assert agent is not None
    assert router_id not in node.placed
    assert env.router(router_id)["hosts"] == []

    env.place(namespace)  # appears on this host: reported at once, placed, applied
    wait(lambda: env.table(namespace) == {FTP}, "the binding applied once placed")
    assert agent.kernel_state(router_id) is not None

    env.unplace(namespace)  # moves away: forgotten here, its table left to the namespace
    wait(lambda: router_id not in node.placed, "the router no longer placed")
    wait(lambda: agent.kernel_state(router_id) is None, "the router forgotten")
    assert env.table(namespace) == {FTP}
    assert env.router(router_id)["hosts"] == []

    env.place(namespace)  # back again
    wait(lambda: agent.kernel_state(router_id) is not None, "the router kept again")
    assert env.router(router_id)["hosts"] == [env.host]


def test_a_deleted_router_has_its_table_removed_by_its_host(env: Env) -> None:
    namespace = names()
    router_id = env.create_router(namespace)
    env.bind(router_id, "tcp", 21, "ftp")
    env.place(namespace)
    node = env.node()
    assert node.start()
    wait(lambda: env.table(namespace) == {FTP}, "the binding in the kernel")
    assert env.admin.delete(f"/v2.0/routers/{router_id}").status_code == 204
    wait(lambda: env.table(namespace) is None, "the table removed")
    answer = env.admin.get(f"/v2.0/routers/{router_id}")
    assert answer.status_code == 404


def test_start_sweeps_only_this_deployments_orphans(env: Env) -> None:
    kept, orphan, foreign = names(), names(), names()
    router_id = env.create_router(kept)
    for namespace in (kept, orphan, foreign):
        env.place(namespace)

    def before_start(ours: NftablesBackend) -> None:
        """Tables left by an earlier run of this deployment, and one of another deployment."""
        for namespace in (kept, orphan):
            ours.apply(namespace, [TFTP])
        NftablesBackend(env.kernel, owner="0" * 32).apply(foreign, [TFTP])

    env.before_start = before_start
    node = env.node()
    assert node.start()
    wait(lambda: env.table(kept) == set(), "the placed router's table made as desired")
    assert env.table(orphan) is None  # this deployment's, claimed by no router placed here
    assert env.table(foreign) == {TFTP}  # another deployment's: left
    assert router_id in node.placed


def no_backend(deployment_id: str, namespaces: list[str]) -> Any:
    raise AssertionError("a backend is built only once registered")


def test_start_waits_for_the_api_and_gives_up_when_asked(tmp_path: Path) -> None:
    stop = threading.Event()
    client = ApiClient(f"http://127.0.0.1:{free_port()}", "unused", timeout=1.0)
    node = NodeAgent(
        client,
        "node-x",
        no_backend,
        HelperCatalog(),
        netns_dir=tmp_path,
        stop_event=stop,
    )
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(node.start()))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # still retrying: nothing to register with
    stop.set()
    thread.join(5.0)
    assert outcome == [False]
    assert node.stop(5.0)
    assert not agent_threads()


def test_a_refused_token_is_final(env: Env) -> None:
    node = env.node(token="not-a-token")
    with pytest.raises(ApiRefused) as refused:
        node.start()
    assert refused.value.status == 401
    assert not agent_threads()


def test_a_token_of_another_host_is_refused(env: Env) -> None:
    node = NodeAgent(
        ApiClient(env.server.url, env.token, timeout=5.0),
        "some-other-host",
        env.make_backend,
        HelperCatalog(),
        netns_dir=env.netns,
    )
    env.nodes.append(node)
    with pytest.raises(ApiRefused) as refused:
        node.start()
    assert refused.value.status == 403


def test_stop_is_prompt_during_a_long_poll_and_leaves_no_thread(env: Env) -> None:
    namespace = names()
    env.create_router(namespace)
    env.place(namespace)
    node = env.node(report_interval=0.3)
    assert node.start()

    def reported() -> dict[str, Any]:
        agents = env.admin.get("/v2.0/agents").json()["agents"]
        return next((a["configurations"] for a in agents if a["host"] == env.host), {})

    # The heartbeat reports the configurations, the watch's counters among them.
    wait(lambda: (reported().get("watch") or {}).get("relists", 0) >= 1, "the watch reported")
    configurations = reported()
    assert configurations["namespaces"] == 1
    assert configurations["backend"] == "nftables"
    assert configurations["watch"]["connected"] is True

    time.sleep(0.5)  # a long poll is in flight (no change to answer it)
    start = time.monotonic()
    assert node.stop(10.0)
    assert time.monotonic() - start < 3.0
    assert not agent_threads()
