"""The embedded agent's status reports of a run of routers are written in one transaction
(real SQLite): a cold sync pays one fsynced commit per run, not per router, and what the agent
reports and when it counts as settled stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent_support import RefusingFake
from sqlalchemy import Engine, event

from cthm.agent import Agent, LocalStoreSource
from cthm.agent.ports import RouterReport
from cthm.domain import HelperCatalog, Router, Status, new_binding, new_router
from cthm.netfilter import NftablesBackend
from cthm.store import Store

ROUTERS = 12


def routers(store: Store) -> list[tuple[Router, str]]:
    """(router, its one binding's id) for ROUTERS routers."""
    made = []
    with store.unit_of_work() as repo:
        for index in range(ROUTERS):
            router = repo.add_router(
                new_router(name=f"r{index}", project_id="p", namespace=f"qrouter-gc{index}")
            )
            binding = new_binding(HelperCatalog(), router, protocol="tcp", port=21, helper="ftp")
            made.append((router, repo.add_binding(binding).id))
    with store.unit_of_work(write=False) as repo:  # a binding added moves its router's revision
        return [(repo.get_router(r.id), b) for r, b in made]


class Commits:
    """Counts the transactions (any engine) that wrote a router status, while active."""

    def __init__(self) -> None:
        self.count = 0
        self._writing: set[int] = set()  # connections that wrote a status since their commit

    def __enter__(self) -> Commits:
        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(Engine, "commit", self._commit)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._statement)
        event.remove(Engine, "commit", self._commit)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE routers SET status"):
            self._writing.add(id(conn))

    def _commit(self, conn: Any) -> None:
        if id(conn) in self._writing:
            self._writing.discard(id(conn))
            self.count += 1


def router_statuses(store: Store, made: list[tuple[Router, str]]) -> list[Status]:
    with store.unit_of_work(write=False) as repo:
        return [repo.get_router(r.id).status for r, _ in made]


def test_held_reports_are_written_together_by_the_flush(db: tuple[Store, Path]) -> None:
    store, _ = db
    made = routers(store)
    source = LocalStoreSource(store)
    source.hold_reports()
    for router, _ in made:
        source.report(RouterReport(router.id, router.revision_number, Status.ACTIVE))
    assert set(router_statuses(store, made)) == {Status.PENDING}  # nothing written yet
    with Commits() as commits:
        assert source.flush_reports() == {}
    assert commits.count == 1
    assert set(router_statuses(store, made)) == {Status.ACTIVE}
    # After the flush, reports are written at once again.
    router = made[0][0]
    source.report(RouterReport(router.id, router.revision_number, Status.ERROR, "gone"))
    assert router_statuses(store, made)[0] is Status.ERROR


def test_a_bad_held_report_fails_only_its_router(db: tuple[Store, Path]) -> None:
    store, _ = db
    made = routers(store)
    source = LocalStoreSource(store)
    bad = made[3][0]
    source.hold_reports()
    for router, _ in made:
        reason: Any = 7 if router is bad else ""  # not a string: refused by the store
        source.report(RouterReport(router.id, router.revision_number, Status.ACTIVE, reason))
    failed = source.flush_reports()
    assert list(failed) == [bad.id]
    assert "status_reason" in str(failed[bad.id])
    assert router_statuses(store, made) == [
        Status.PENDING if r is bad else Status.ACTIVE for r, _ in made
    ]


def test_a_held_report_on_an_older_revision_is_still_ignored(db: tuple[Store, Path]) -> None:
    store, _ = db
    made = routers(store)
    source = LocalStoreSource(store)
    source.hold_reports()
    for router, _ in made:
        source.report(RouterReport(router.id, router.revision_number - 1, Status.ERROR, "old"))
    assert source.flush_reports() == {}
    assert set(router_statuses(store, made)) == {Status.PENDING}


def test_a_settled_cold_sync_has_every_status_written_in_few_commits(
    db: tuple[Store, Path],
) -> None:
    store, _ = db
    made = routers(store)
    kernel = RefusingFake()
    for router, _ in made:
        kernel.add_namespace(router.namespace)
    agent = Agent(
        LocalStoreSource(store), NftablesBackend(kernel, owner="gc-test"), HelperCatalog()
    )
    agent.enqueue([r.id for r, _ in made])  # all ready before the workers run: one run each
    with Commits() as commits:
        agent.start()
        try:
            assert agent.wait_settled(timeout=30)
            # Settled means written: the statuses are in the database now.
            with store.unit_of_work(write=False) as repo:
                got = [
                    (repo.get_router(r.id).status, repo.get_binding(r.id, b).status)
                    for r, b in made
                ]
        finally:
            assert agent.stop()
    assert got == [(Status.ACTIVE, Status.ACTIVE)] * ROUTERS
    assert agent.counts["applied"] == ROUTERS
    assert commits.count < ROUTERS // 2  # was one per router
