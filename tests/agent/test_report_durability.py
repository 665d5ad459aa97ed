"""The embedded agent's status reports are derived state: committed without their own fsync
(SQLite synchronous=NORMAL, atomic and crash-safe, rewritten by the first full sync after a power
loss), while the API's writes keep theirs; and a run that reports nothing opens no write
transaction (real SQLite file, the fake kernel)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import HelperCatalog, ListQuery, Router, Status, new_binding, new_router
from cthm.netfilter import FakeNftables, NftablesBackend
from cthm.store import Store

NAMESPACE = "qrouter-durability"


class Synchronous:
    """`PRAGMA synchronous` in force for each write statement of interest, while active."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def __enter__(self) -> Synchronous:
        event.listen(Engine, "before_cursor_execute", self._statement)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._statement)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # However the repository words them (one UPDATE a row, or one from a VALUES list).
        for what in ("UPDATE routers SET status", "INSERT INTO conntrack_helpers"):
            if what in statement:
                level = cursor.connection.execute("PRAGMA synchronous").fetchone()[0]
                self.seen.append((what, level))


def setup(store: Store) -> tuple[Agent, LocalStoreSource, Router]:
    kernel = FakeNftables()
    kernel.add_namespace(NAMESPACE)
    source = LocalStoreSource(store)
    agent = Agent(source, NftablesBackend(kernel), HelperCatalog(), sweep_orphans=False)
    with store.unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p", namespace=NAMESPACE))
    return agent, source, router


def test_reports_commit_relaxed_and_api_writes_durable(db: tuple[Store, Path]) -> None:
    store, _ = db
    agent, _, router = setup(store)
    with Synchronous() as sync:
        with store.unit_of_work() as repo:  # as the API writes a binding
            repo.add_binding(
                new_binding(HelperCatalog(), router, protocol="tcp", port=21, helper="ftp")
            )
        agent.sync_all()
    # FULL (2) for the API's write, NORMAL (1) for the agent's report of it.
    assert sync.seen == [("INSERT INTO conntrack_helpers", 2), ("UPDATE routers SET status", 1)]
    # The report reached the database: another store (its own connections) reads it.
    other = Store(store.url)
    try:
        with other.unit_of_work(write=False) as repo:
            assert repo.get_router(router.id).status is Status.ACTIVE
            assert [b.status for b in repo.list_bindings(ListQuery(), router.id)] == [Status.ACTIVE]
    finally:
        other.close()


def test_a_run_with_nothing_to_report_takes_no_write_lock(db: tuple[Store, Path]) -> None:
    store, path = db
    agent, source, router = setup(store)
    agent.sync_all()  # reported ACTIVE once; nothing more to report after
    finished = threading.Event()
    failed: dict[str, Exception] = {}

    def no_op_run() -> None:
        source.hold_reports()
        agent._reconcile(router.id)  # as a worker's run: a no-op, no status changed
        failed.update(source.flush_reports())
        finished.set()

    # Another process's writer holds its turn (store/writer_turns.py) and SQLite's write lock.
    turn = os.open(path.with_name(path.name + "-writers"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(turn, fcntl.LOCK_EX)
    holder = sqlite3.connect(path, isolation_level=None, timeout=1)
    holder.execute("BEGIN IMMEDIATE")
    worker = threading.Thread(target=no_op_run, daemon=True)
    try:
        worker.start()
        # A write transaction would wait for that writer (up to 30 s), with nothing to write.
        assert finished.wait(10), "a run with nothing to report waited for another writer"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        fcntl.flock(turn, fcntl.LOCK_UN)
        os.close(turn)
        worker.join(60)
    assert failed == {}


def test_a_lost_report_is_written_again_by_the_next_full_sync(db: tuple[Store, Path]) -> None:
    store, path = db
    agent, _, router = setup(store)
    with store.unit_of_work() as repo:
        repo.add_binding(
            new_binding(HelperCatalog(), router, protocol="tcp", port=21, helper="ftp")
        )
    agent.sync_all()
    # As after a power loss took the last (not fsynced) report: the statuses are as before it.
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE routers SET status = 'PENDING'")
        raw.execute("UPDATE conntrack_helpers SET status = 'PENDING'")
    raw.close()

    agent.sync_all()  # the periodic resync (or the start after the restart)

    with store.unit_of_work(write=False) as repo:
        assert repo.get_router(router.id).status is Status.ACTIVE
        assert [b.status for b in repo.list_bindings(ListQuery(), router.id)] == [Status.ACTIVE]
