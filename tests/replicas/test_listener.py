"""The change listener (LISTEN cthm_changes) on a real PostgreSQL: notifications delivered as
revisions, a reconnect after the server restarts followed by a call without revision (read
again), an immediate stop; and Store.subscribe hearing of another store's commits."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cthm.domain import new_router
from cthm.store import Store
from cthm.store.listener import ChangeListener, conninfo
from cthm.testing.postgres import PostgresCluster

WAIT = 15.0


@pytest.fixture
def database(cluster: PostgresCluster) -> Iterator[str]:
    name = f"listener_{os.getpid()}_{time.monotonic_ns()}"
    url = cluster.create_database(name)
    yield url
    cluster.drop_database(name)


def notify(url: str, payload: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as connection:
        connection.execute("SELECT pg_notify('cthm_changes', %s)", (payload,))


def next_call(calls: queue.Queue[int | None]) -> int | None:
    try:
        return calls.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail(f"the listener did not call back within {WAIT}s")


def test_listener_delivers_revisions_and_reads_again_after_a_restart(
    cluster: PostgresCluster, database: str
) -> None:
    calls: queue.Queue[int | None] = queue.Queue()
    listener = ChangeListener(database, calls.put)
    listener.start()
    try:
        assert next_call(calls) is None  # connected: read whatever came before
        notify(database, "41")
        notify(database, "not a revision")
        assert [next_call(calls), next_call(calls)] == [41, None]

        cluster.restart()  # the listener's session ends with the server
        assert next_call(calls) is None  # reconnected: notifications in between are lost
        assert listener.connected
        notify(database, "42")
        assert next_call(calls) == 42
    finally:
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 1.0, "stop() waited"
    assert not listener.connected


def test_listener_keeps_trying_while_the_server_is_down_and_stops_at_once(
    cluster: PostgresCluster, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cthm.store.listener")
    calls: queue.Queue[int | None] = queue.Queue()
    listener = ChangeListener(database, calls.put)
    cluster.stop()
    listener.start()
    try:
        time.sleep(1.0)  # a few failed attempts, in its backoff now
        assert calls.empty()
        assert not listener.connected
        cluster.start()
        assert next_call(calls) is None
    finally:
        started = time.monotonic()
        listener.stop()
        assert time.monotonic() - started < 1.0, "stop() waited"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, caplog.text  # one per outage; the retries at DEBUG
    assert len(caplog.records) > 2, caplog.text
    assert cluster.password not in caplog.text


def test_subscribers_hear_of_commits_made_by_another_store(database: str) -> None:
    """Two stores on one database, as two replicas: a commit through one reaches the other's
    subscribers with the changed router's id (read from the change log: NOTIFY carries only the
    revision)."""
    heard: queue.Queue[frozenset[str]] = queue.Queue()
    listening, writing = Store(database), Store(database)
    try:
        listening.subscribe(heard.put)
        # Once listening, the store wakes its subscribers (with no router: nothing seen yet).
        assert heard.get(timeout=WAIT) == frozenset()
        with writing.unit_of_work() as repo:
            router = repo.add_router(new_router(name="r", project_id="p", namespace="qrouter-x"))
        deadline = time.monotonic() + WAIT
        found: set[str] = set()
        while router.id not in found and time.monotonic() < deadline:
            try:
                found |= heard.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
        assert router.id in found
    finally:
        listening.close()
        writing.close()


def test_a_wake_up_alone_is_told_without_reading_the_change_log(database: str) -> None:
    """A subscriber that needs no router ids (the API's watches read again by revision) is woken
    by another store's commit, and the listening store reads nothing for it: a replica without
    an agent pays no query per write of another replica."""
    woken: queue.Queue[frozenset[str]] = queue.Queue()
    listening, writing = Store(database), Store(database)
    read_by_the_listener: list[str] = []

    def note(*args: object) -> None:
        if threading.current_thread().name == "cthm-change-listener":
            read_by_the_listener.append(str(args[2]))

    event.listen(Engine, "before_cursor_execute", note)
    try:
        listening.subscribe(woken.put, router_ids=False)
        assert woken.get(timeout=WAIT) == frozenset()  # listening now
        for name in ("a", "b"):
            with writing.unit_of_work() as repo:
                repo.add_router(new_router(name=name, project_id="p", namespace=f"qrouter-{name}"))
            assert woken.get(timeout=WAIT) == frozenset()
        assert read_by_the_listener == []
    finally:
        event.remove(Engine, "before_cursor_execute", note)
        listening.close()
        writing.close()
