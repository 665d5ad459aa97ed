"""Faults under API replicas on one PostgreSQL (issue 13): the database restarting while both
serve and a watch waits, a replica killed, a replica started before its database is up.
Real `cthm serve --no-agent` processes and a real PostgreSQL that the test stops and starts."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from cthm.testing import ServerProcess
from cthm.testing.postgres import PostgresCluster
from replicas.fleet import Replicas, create_binding, create_router, head_revision

RECOVERY_TIMEOUT = 30.0
SIGTERM_BOUND = 5.0
WAIT_LINE = "waiting for it"
"""Words of the one line `cthm serve` says when its database cannot be reached at start."""


@dataclass
class Ledger:
    """Routers created through the replicas: acknowledged (201) ones, and the answers that
    were not a 201 (503 while the database is down, or a cut connection)."""

    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_routers(clients: list[httpx.Client], ledger: Ledger, stop: threading.Event) -> None:
    """Creates routers through the clients in turn until `stop` (bounded count)."""
    for index in range(5000):
        if stop.is_set():
            return
        client = clients[index % len(clients)]
        label = f"w{index}"
        body = {
            "router": {"name": label, "project_id": "replicas", "namespace": f"qrouter-{label}"}
        }
        try:
            response = client.post("/v2.0/routers", json=body)
        except httpx.TransportError as exc:
            with ledger.lock:
                ledger.refused.append(f"{label}: {exc.__class__.__name__}")
            time.sleep(0.05)
            continue
        with ledger.lock:
            if response.status_code == 201:
                ledger.acknowledged.append(response.json()["router"]["id"])
            else:
                ledger.refused.append(f"{label}: {response.status_code}")
        if response.status_code != 201:
            time.sleep(0.05)  # the database is down: do not spin


@dataclass
class Watcher:
    """A watch loop on one replica as an agent runs it: from the revision it holds, again
    after every answer; a refused or cut watch is tried again from the same revision."""

    client: httpx.Client
    revision: int
    events: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        for _ in range(5000):
            if self.stop.is_set():
                return
            try:
                response = self.client.get(
                    "/v2.0/watch", params={"since": self.revision, "timeout": 2}
                )
            except httpx.TransportError as exc:
                self.failures.append(exc.__class__.__name__)
                time.sleep(0.1)
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code} {response.text[:200]}")
                time.sleep(0.1)
                continue
            body = response.json()
            self.events.extend(body["events"])
            self.revision = body["revision"]

    def seen(self) -> set[str]:
        return {event["router_id"] for event in list(self.events)}


def test_postgres_restart_while_replicas_serve_and_a_watch_waits(
    replicas: Replicas, cluster: PostgresCluster
) -> None:
    servers = replicas.start(2)
    clients = [replicas.client(server) for server in servers]
    watch_client = replicas.client(servers[0], timeout=10.0)
    watcher = Watcher(watch_client, head_revision(watch_client))
    ledger = Ledger()
    stop_writing = threading.Event()
    threads = [
        threading.Thread(target=watcher.run),
        threading.Thread(target=write_routers, args=(clients, ledger, stop_writing)),
    ]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(ledger.acknowledged) >= 5, "writes before the restart")
        cluster.restart()  # under load: writes in flight fail or commit, none half
        acknowledged = len(ledger.acknowledged)
        wait_for(lambda: len(ledger.acknowledged) > acknowledged + 5, "writes after a restart")

        cluster.stop()
        for client in clients:  # down: every write is refused, clearly, without credentials
            response = client.post(
                "/v2.0/routers",
                json={"router": {"name": "d", "project_id": "replicas", "namespace": "qrouter-d"}},
            )
            assert response.status_code == 503, response.text
            message = response.json()["NeutronError"]["message"]
            assert "database" in message, message
            assert cluster.password not in response.text
            assert "127.0.0.1" not in response.text  # nor where the database is
        # The waiting watch re-reads the database at least every second: it must see the
        # outage too (an answer that is not 200), not sleep through it.
        wait_for(lambda: bool(watcher.failures), "the watch to see the database down")
        cluster.start()
        acknowledged = len(ledger.acknowledged)
        wait_for(lambda: len(ledger.acknowledged) > acknowledged + 5, "writes after the outage")
        stop_writing.set()
        threads[1].join(30)

        # Every acknowledged write is there, on both replicas; the watch missed none.
        for client in clients:
            listed = client.get("/v2.0/routers", params={"limit": 10000})
            assert listed.status_code == 200, listed.text
            ids = {router["id"] for router in listed.json()["routers"]}
            assert set(ledger.acknowledged) <= ids
        wait_for(
            lambda: set(ledger.acknowledged) <= watcher.seen(),
            "the watch to hear of every acknowledged write",
            lambda: f"missed {set(ledger.acknowledged) - watcher.seen()}",
        )
        revisions = [event["revision"] for event in watcher.events]
        assert revisions == sorted(set(revisions)), "events repeated or out of order"
        assert ledger.refused, "no write was refused: the database was never down"
    finally:
        stop_writing.set()
        watcher.stop.set()
        for thread in threads:
            thread.join(30)
        for client in [*clients, watch_client]:
            client.close()


def test_one_replica_killed_the_other_keeps_serving(replicas: Replicas) -> None:
    first, second = replicas.start(2)
    with replicas.client(first) as survivor, replicas.client(second) as doomed:
        router_id = create_router(survivor, "survivor")
        created = create_binding(survivor, router_id, 2100)
        assert created.status_code == 201, created.text
        binding_id = created.json()["conntrack_helper"]["id"]
        url = f"/v2.0/routers/{router_id}/conntrack_helpers/{binding_id}"

        # The doomed replica updates the same binding as fast as it can when it is killed:
        # whatever it held in the database (a lock, a transaction) must not block the other.
        stop = threading.Event()

        def hammer() -> None:
            for port in range(5000, 9000):
                if stop.is_set():
                    return
                try:
                    doomed.put(url, json={"conntrack_helper": {"port": port}})
                except httpx.TransportError:
                    return

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.5)
        assert second.process is not None
        second.process.send_signal(signal.SIGKILL)
        second.process.wait(10)
        stop.set()
        thread.join(15)

        started = time.monotonic()
        updated = survivor.put(url, json={"conntrack_helper": {"port": 2200}})
        assert updated.status_code == 200, updated.text
        assert time.monotonic() - started < 5.0
        since = head_revision(survivor)
        assert create_binding(survivor, router_id, 2300).status_code == 201
        bindings = survivor.get(f"/v2.0/routers/{router_id}/conntrack_helpers")
        assert sorted(b["port"] for b in bindings.json()["conntrack_helpers"]) == [2200, 2300]
        watched = survivor.get("/v2.0/watch", params={"since": since, "timeout": 0})
        assert [e["router_id"] for e in watched.json()["events"]] == [router_id]
        assert survivor.get("/healthz").status_code == 200


def test_replica_started_before_its_database_waits_then_serves(
    replicas: Replicas, cluster: PostgresCluster
) -> None:
    cluster.stop()
    server = replicas.make("--log-level", "DEBUG")  # not even DEBUG shows the password
    started = start_in_background(server)
    wait_for(lambda: WAIT_LINE in said(server), "the line saying the database is unreachable")
    time.sleep(2.5)  # long enough for more attempts (after 1 s, then 2 s more)
    assert server.process is not None
    assert server.process.poll() is None, server.logs()
    assert_said_once(server, cluster)
    cluster.start()
    started.join(40)
    assert not started.is_alive()
    assert started.error is None, started.error
    assert_said_once(server, cluster)
    with replicas.client(server) as client:  # it made the first token, and serves
        assert client.get("/v2.0/routers").status_code == 200
        assert create_router(client, "late")
    assert server.stop() == 0


def test_sigterm_stops_a_replica_waiting_for_its_database_at_once(
    replicas: Replicas, cluster: PostgresCluster
) -> None:
    cluster.stop()
    server = replicas.make()
    started = start_in_background(server)
    wait_for(lambda: WAIT_LINE in said(server), "the line saying the database is unreachable")
    # Tries after 1, 3 and 7 s, then at 15 s: SIGTERM comes in the middle of a long wait, which
    # it must cut short (the bound leaves room for the exit itself on a loaded machine).
    time.sleep(7.5)
    sent = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0, server.logs()
    assert time.monotonic() - sent < SIGTERM_BOUND
    started.join(40)
    assert_said_once(server, cluster)


def test_replica_with_refused_credentials_fails_instead_of_waiting(
    replicas: Replicas, cluster: PostgresCluster
) -> None:
    replicas.url = replicas.url.replace(cluster.password, "not-the-password")
    server = replicas.make()
    with pytest.raises(AssertionError, match="exited with 1"):
        server.start()
    assert server.process is not None
    assert server.process.wait(10) == 1
    assert "refused the credentials" in server.stderr, server.logs()
    assert WAIT_LINE not in said(server)
    assert "Traceback" not in said(server)
    assert "not-the-password" not in said(server)


class Starter(threading.Thread):
    """server.start() in a thread (it waits until the server is healthy, or fails)."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__()
        self.server = server
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # reported in the test's thread
            self.error = exc


def start_in_background(server: ServerProcess) -> Starter:
    starter = Starter(server)
    starter.start()
    return starter


def said(server: ServerProcess) -> str:
    """What the server wrote so far (nothing before it created its log files)."""
    try:
        return server.stdout + server.stderr
    except FileNotFoundError:
        return ""


def assert_said_once(server: ServerProcess, cluster: PostgresCluster) -> None:
    """One line says the database cannot be reached; no traceback, no password."""
    output = said(server)
    lines = [line for line in output.splitlines() if WAIT_LINE in line]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    assert cluster.password not in output


def wait_for(
    predicate: Callable[[], bool],
    what: str,
    explain: Callable[[], str] = lambda: "",
    timeout: float = RECOVERY_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert predicate(), f"timed out waiting for {what} {explain()}"
