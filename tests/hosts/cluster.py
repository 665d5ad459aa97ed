"""Several hosts on one machine for the multi-host suite: a real `cthm serve --no-agent`, fake
hosts (cthm.testing.FakeHost) each running `cthm agent run` with a token limited to it, real
router namespaces placed on hosts under host-local names, and a TCP relay that can cut or
block an agent's connections to the API.

The kernel is always read in the real namespaces from the root mount namespace with the nft
binary (support.faults.kernel_table), never through the server or an agent under test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cthm.testing import AgentProcess, FakeHost, NamespaceFactory, ServerProcess, stop_process
from cthm.testing.service import free_port
from support.faults import Api, kernel_table, nft, router_settled

HOST_A = "node-a"
HOST_B = "node-b"
PROJECT = "hosts"
REPORT_INTERVAL = 1.0
RESYNC_INTERVAL = 600.0
"""Longer than any test: a change the watch lost is never rescued by the periodic resync."""
DOWN_TIME = 10.0
"""The server's agent_down_time in most tests: long enough that a busy 2-core machine does not
make a heartbeat late (an agent found dead turns its routers to ERROR)."""
SETTLE_TIMEOUT = 45.0


def poll(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    explain: Callable[[], str] = lambda: "",
    interval: float = 0.1,
) -> float:
    """Waits (bounded in time and count) until `predicate()`; returns the seconds it took.
    Fails with `what` and `explain()` when the deadline passes."""
    start = time.monotonic()
    deadline = start + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    if predicate():
        return time.monotonic() - start
    raise AssertionError(f"not within {timeout}s: {what}\n{explain()}")


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class PlacedRouter:
    """A router of the API and the kernel namespaces that hold it on each host."""

    id: str
    namespace: str
    """The name under /run/netns on the hosts (what the API knows)."""
    real: dict[str, str] = field(default_factory=dict)
    """host -> the namespace's name in the root mount namespace (where the test reads nft)."""


class Relay:
    """A TCP relay on 127.0.0.1 in front of the API: cut() ends every connection through it
    mid-stream; block() refuses (accepts and closes at once) until unblock()."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._threads: list[threading.Thread] = []
        self._blocked = False
        self._closed = threading.Event()
        self.accepted = 0
        self.cuts = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def block(self) -> None:
        with self._lock:
            self._blocked = True
        self.cut()

    def unblock(self) -> None:
        with self._lock:
            self._blocked = False

    def cut(self) -> int:
        """Ends every open connection (both directions); returns how many."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._threads = [t for t in self._threads if t.is_alive()]
        for pair in pairs:
            for sock in pair:
                _shut(sock)
        if pairs:
            self.cuts += 1
        return len(pairs)

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                blocked = self._blocked
            if blocked:
                _shut(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                _shut(client)
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            pumps = [
                threading.Thread(target=_pump, args=(client, upstream), daemon=True),
                threading.Thread(target=_pump, args=(upstream, client), daemon=True),
            ]
            with self._lock:
                self.accepted += 1
                self._pairs.append((client, upstream))
                self._threads.extend(pumps)
            for pump in pumps:
                pump.start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    # Ends when either side closes or the relay cuts the pair (shutdown wakes the recv).
    while True:
        try:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
        except OSError:
            break
    _shut(source)
    _shut(sink)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already shut: the other pump got there first
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Cluster:
    """The API, the hosts and their agents, and the routers placed on them; close() stops
    every process it started (by pid) and ends every host, in that order."""

    def __init__(self, tmp: Path, netns: NamespaceFactory) -> None:
        self.tmp = tmp
        self.netns = netns
        self.server: ServerProcess | None = None
        self.api: Api | None = None
        self.hosts: dict[str, FakeHost] = {}
        self.tokens: dict[str, Path] = {}
        self.agents: dict[str, AgentProcess] = {}
        self.relays: list[Relay] = []
        self.monitors: list[TableWrites] = []
        self._restarts = 0
        self.last_server_stderr = ""

    # --- the API -----------------------------------------------------------------------------

    def start_server(self, down_time: float = DOWN_TIME, *extra: str) -> ServerProcess:
        # A fixed port: the agents keep their URL across restarts of the API.
        args = ("--no-agent", "--agent-down-time", str(down_time), *extra)
        self.server = ServerProcess(
            self.tmp / "data", self.tmp / "server", port=free_port(), args=args
        )
        self.server.start()
        self.api = Api(self.server, timeout=10.0)
        return self.server

    def restart_server(self, between: Callable[[], None] = lambda: None) -> float:
        """Stops the API (SIGTERM), runs `between`, starts it again on its data dir and port.
        Returns how long the stop took."""
        took = self.stop_server()
        between()
        self._server().start()
        return took

    def stop_server(self) -> float:
        """Stops the API (SIGTERM) and waits; returns the seconds that took. Its logs so far
        stay readable in `last_server_stderr`."""
        start = time.monotonic()
        self._server().stop()
        took = time.monotonic() - start
        self.last_server_stderr = self._server().stderr
        self._keep_server_logs()
        return took

    def _keep_server_logs(self) -> None:
        # A restart writes the same log files again: keep the previous run's.
        server = self._server()
        self._restarts += 1
        for path in (
            server.log_dir / f"serve-{server.port}.out",
            server.log_dir / f"serve-{server.port}.err",
        ):
            if path.exists():
                shutil.copy(path, path.with_suffix(f"{path.suffix}.{self._restarts}"))

    def _server(self) -> ServerProcess:
        assert self.server is not None, "start_server() first"
        return self.server

    @property
    def client(self) -> httpx.Client:
        assert self.api is not None, "start_server() first"
        return self.api.client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, url, **kwargs)

    def get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self.client.get(url, **kwargs)
        if response.status_code != 200:
            raise AssertionError(f"GET {url}: {response.status_code} {response.text}")
        body: dict[str, Any] = response.json()
        return body

    # --- hosts and agents ----------------------------------------------------------------------

    def add_host(self, name: str) -> FakeHost:
        host = FakeHost(name, self.tmp / "hosts")
        self.hosts[name] = host  # registered before start: close() ends it whatever happens
        host.start()
        return host

    def token_file(self, host: str) -> Path:
        """An agent token limited to `host`, made through the API, in a 0600 file."""
        if host not in self.tokens:
            body = {
                "auth_token": {
                    "project_id": PROJECT,
                    "roles": ["agent"],
                    "host": host,
                    "description": f"agent on {host}",
                }
            }
            response = self.client.post("/v2.0/auth_tokens", json=body)
            if response.status_code != 201:
                raise AssertionError(f"token for {host}: {response.status_code} {response.text}")
            path = self.tmp / f"token-{host}"
            path.touch(mode=0o600)
            path.write_text(response.json()["auth_token"]["token"] + "\n", encoding="ascii")
            self.tokens[host] = path
        return self.tokens[host]

    def start_agent(
        self, host: str, *, url: str | None = None, extra_args: Sequence[str] = ()
    ) -> AgentProcess:
        agent = self.hosts[host].start_agent(
            url or self._server().url,
            self.token_file(host),
            report_interval=REPORT_INTERVAL,
            resync_interval=RESYNC_INTERVAL,
            extra_args=extra_args,
        )
        self.agents[host] = agent
        return agent

    def agent_body(self, host: str) -> dict[str, Any] | None:
        """The API's agent record for the host (GET /v2.0/agents), None when not listed."""
        for agent in self.get_json("/v2.0/agents")["agents"]:
            if agent["host"] == host:
                found: dict[str, Any] = agent
                return found
        return None

    def wait_agent_report_after(
        self, host: str, moment: datetime, timeout: float = 15
    ) -> dict[str, Any]:
        """The host's agent record once its heartbeat is later than `moment`."""
        found: dict[str, Any] = {}

        def reported() -> bool:
            body = self.agent_body(host)
            beat = parse_time(body["heartbeat_timestamp"]) if body else None
            if body is None or beat is None or beat <= moment:
                return False
            found.update(body)
            return True

        poll(reported, timeout, f"a report of {host} after {moment}", self.explain)
        return found

    # --- routers ---------------------------------------------------------------------------------

    def place(self, label: str, hosts: Iterable[str]) -> PlacedRouter:
        """Makes a real namespace per host and adds it to that host as `qrouter-<label>` (an HA
        router when several hosts). The router itself is created with create_router()."""
        placed = PlacedRouter(id="", namespace=f"qrouter-{label}")
        for index, host in enumerate(hosts):
            real = self.netns.create(f"{label}{index}")
            self.hosts[host].add_namespace(placed.namespace, real)
            placed.real[host] = real
        return placed

    def create_router(
        self, placed: PlacedRouter, bindings: Sequence[tuple[str, int, str]] = ()
    ) -> PlacedRouter:
        assert self.api is not None
        placed.id = self.api.create_router(placed.namespace, name=placed.namespace)
        for protocol, port, helper in bindings:
            self.add_binding(placed, protocol, port, helper)
        return placed

    def add_binding(self, router: PlacedRouter, protocol: str, port: int, helper: str) -> str:
        assert self.api is not None
        response = self.api.create_binding(router.id, protocol, port, helper)
        if response.status_code != 201:
            raise AssertionError(f"binding create: {response.status_code} {response.text}")
        binding_id: str = response.json()["conntrack_helper"]["id"]
        return binding_id

    def delete_binding(self, router: PlacedRouter, binding_id: str) -> None:
        assert self.api is not None
        response = self.api.delete_binding(router.id, binding_id)
        if response.status_code != 204:
            raise AssertionError(f"binding delete: {response.status_code} {response.text}")

    def api_bindings(self, router: PlacedRouter) -> list[dict[str, Any]]:
        assert self.api is not None
        return self.api.bindings(router.id)

    def router(self, router: PlacedRouter) -> dict[str, Any]:
        assert self.api is not None
        return self.api.router(router.id)

    def kernel_state(self, router: PlacedRouter) -> dict[str, Any]:
        body = self.get_json(f"/v2.0/routers/{router.id}/kernel_state")
        state: dict[str, Any] = body.get("kernel_state", body)
        return state

    def unsettled(self, router: PlacedRouter, hosts: Iterable[str] | None = None) -> str:
        """ "" when the kernel namespace of every host (or of `hosts`) holds exactly the router's
        bindings and the router and its bindings are ACTIVE; else what is not."""
        assert self.api is not None
        problems = []
        for host in sorted(hosts if hosts is not None else router.real):
            problem = router_settled(self.api, router.id, router.real[host])
            if problem:
                problems.append(f"{host}: {problem}")
        return "; ".join(problems)

    def wait_settled(
        self, routers: Sequence[PlacedRouter], timeout: float = SETTLE_TIMEOUT
    ) -> float:
        problems: dict[str, str] = {}

        def check() -> bool:
            problems.clear()
            for router in routers:
                problem = self.unsettled(router)
                if problem:
                    problems[router.namespace] = problem
            return not problems

        return poll(check, timeout, "routers settled", lambda: f"{problems}\n{self.explain()}")

    # --- diagnostics and cleanup ---------------------------------------------------------------

    def explain(self) -> str:
        """Agent and server logs (tails) and the agents as the API shows them: for failures."""
        parts = [agent.log_tail(3000) for agent in self.agents.values()]
        if self.server is not None:
            parts.append(f"--- server stderr:\n{self.server.stderr[-3000:]}")
            try:
                agents = self.client.get("/v2.0/agents", timeout=3).text
                parts.append(f"--- GET /v2.0/agents: {agents[:3000]}")
            except httpx.HTTPError as exc:
                parts.append(f"--- GET /v2.0/agents failed: {exc}")
        return "\n".join(parts)

    def relay(self) -> Relay:
        relay = Relay(self._server().port)
        self.relays.append(relay)
        return relay

    def table_writes(self, router: PlacedRouter, host: str) -> TableWrites:
        monitor = TableWrites(router.real[host], self.tmp / "monitors")
        self.monitors.append(monitor)
        return monitor

    def close(self) -> None:
        # Every step runs even when one fails (the first failure is raised at the end).
        with contextlib.ExitStack() as stack:
            if self.server is not None and self.server.process is not None:
                stack.callback(self.server.kill)
            if self.api is not None:
                stack.callback(self.api.close)
            # Run last in, first out: the hosts (and their agents) go first.
            for relay in self.relays:
                stack.callback(relay.close)
            for monitor in self.monitors:
                stack.callback(monitor.close)
            for host in self.hosts.values():
                stack.callback(host.close)


def watch_events(cluster: Cluster, since: int, host: str) -> list[Mapping[str, Any]]:
    """GET /v2.0/watch for `host` from `since`, at once (timeout 0); the events it answers."""
    response = cluster.client.get(
        "/v2.0/watch", params={"since": since, "host": host, "timeout": 0}, timeout=10
    )
    if response.status_code != 200:
        raise AssertionError(f"watch: {response.status_code} {response.text}")
    events: list[Mapping[str, Any]] = response.json()["events"]
    return events


def kernel_ports(real: str) -> set[tuple[str, int, str]]:
    """(protocol, port, kernel helper) of cthm's table in the real namespace (empty: none)."""
    table = kernel_table(real)
    if table is None:
        return set()
    return {(a.protocol.value, a.port, a.helper) for a in table.assignments}


def head_revision(cluster: Cluster, host: str = HOST_A) -> int:
    """The change feed's head, as the host's router list answers it (read with the list)."""
    body = cluster.get_json(f"/v2.0/hosts/{host}/routers")
    revision: int = body["revision"]
    return revision


class TableWrites:
    """Counts the kernel's transactions that change cthm's table in a real namespace, as `nft
    monitor` announces them: a full apply (the table replaced whole) or a partial one (set
    elements added or deleted); each ends with a `# new generation` line. The count is the
    number of applies, read from the kernel, not the agent."""

    PROBE = "cthm_hosts_probe"

    def __init__(self, real: str, log_dir: Path) -> None:
        self.real = real
        self.path = log_dir / f"monitor-{real}.out"
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("wb") as out:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", real, "nft", "monitor"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        # Listening only once a probe table of our own shows up in its output: probes made
        # before it subscribed are not announced, so probe again until one is.
        try:
            poll(self._probe, 10, f"nft monitor in {real} listening", self._text, interval=0.2)
        except BaseException:
            self.close()  # not yet known to the Cluster: nobody else would stop it
            raise

    def _probe(self) -> bool:
        if f"delete table inet {self.PROBE}" in self._text():
            return True
        nft(self.real, f"add table inet {self.PROBE}\ndelete table inet {self.PROBE}\n")
        return False

    def _text(self) -> str:
        return self.path.read_text(errors="replace")

    def count(self) -> int:
        count = 0
        ours = False  # the transaction being read changed cthm's table
        for line in self._text().splitlines():
            if line.startswith("# new generation"):
                count += ours
                ours = False
            elif " inet cthm " in f"{line.strip()} ":
                ours = True
        return count

    def close(self) -> None:
        stop_process(self.process)


def dumps(value: object) -> str:
    return json.dumps(value, indent=1, sort_keys=True, default=str)
