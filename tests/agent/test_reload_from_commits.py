"""An API write's way to the kernel (issue 14): the store's revision notes give each binding as
this process committed it, so the agent's reload reads at most the router's row (and not even
that when the notes vouch for it too: test_reload_without_read.py); a status report that leaves
the router's status as read writes only the bindings' rows. Whatever the notes cannot vouch
for is read as before: reload() == load() in every case."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import RefusingFake, Statements, add_ftp_router

from cthm.agent import Action, Agent, LocalStoreSource
from cthm.domain import (
    HelperCatalog,
    ListQuery,
    Protocol,
    Status,
    new_binding,
    new_router,
)
from cthm.netfilter import NftablesBackend
from cthm.store import Store
from cthm.store.revisions import CONTENTS_PER_ROUTER, NOTES_PER_ROUTER, RevisionNotes

CATALOG = HelperCatalog()
NAMESPACE = "qrouter-commits"


def test_a_reload_after_this_process_writes_reads_no_binding(store: Store) -> None:
    source = LocalStoreSource(store)
    router, ids = add_ftp_router(store, [21, 2121, 3000], NAMESPACE)
    last = source.load(router.id)
    assert last is not None
    # As the API writes: one unit of work each.
    with store.unit_of_work() as repo:
        added = repo.add_binding(
            new_binding(CATALOG, router, protocol="udp", port=69, helper="tftp")
        ).id
    with store.unit_of_work() as repo:
        repo.update_binding(router.id, ids[2], port=3001)
    with store.unit_of_work() as repo:
        repo.delete_binding(router.id, ids[0])
    with store.unit_of_work() as repo:
        repo.update_router(router.id, name="renamed")  # a revision that changes no binding

    with Statements() as statements:
        reloaded = source.reload(router.id, last)

    assert statements.touching("conntrack_helpers") == []
    assert len(statements.touching("routers")) == 1  # the router's row: renamed, so read
    assert reloaded is not None
    assert reloaded == source.load(router.id)
    assert [(b.id, b.protocol, b.port) for b in reloaded.bindings] == [
        (ids[1], Protocol.TCP, 2121),
        (ids[2], Protocol.TCP, 3001),
        (added, Protocol.UDP, 69),
    ]
    assert reloaded.router.name == "renamed"
    assert all(b.created_at is None and b.updated_at is None for b in reloaded.bindings)


def test_another_process_write_between_ours_makes_the_reload_read(
    store: Store, database_url: str
) -> None:
    source = LocalStoreSource(store)
    router, ids = add_ftp_router(store, [21, 2121], NAMESPACE)
    last = source.load(router.id)
    assert last is not None
    other = Store(database_url)  # another process's view of the same database
    try:
        with other.unit_of_work() as repo:
            repo.update_binding(router.id, ids[1], port=2222)
    finally:
        other.close()
    with store.unit_of_work() as repo:  # and one of ours after it, which the notes give
        repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=4000, helper="ftp"))

    with Statements() as statements:
        reloaded = source.reload(router.id, last)

    assert statements.touching("conntrack_helpers"), "the gap is read, not taken from notes"
    assert reloaded == source.load(router.id)
    assert reloaded is not None
    assert [b.port for b in reloaded.bindings] == [21, 2222, 4000]


def test_revision_notes_give_the_bindings_as_committed_or_nothing() -> None:
    notes = RevisionNotes()
    router = new_router(name="r", project_id="p", namespace=NAMESPACE)
    first = new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp")
    moved = new_binding(CATALOG, router, protocol="tcp", port=22, helper="ftp")
    assert notes.edits("r", 5, 5) == {}  # nothing new
    assert notes.edits("r", 5, 6) is None
    notes.note([("r", 6, first.id, None), ("r", 7, "", None)], {("r", 6): first})
    assert notes.edits("r", 5, 7) == {first.id: first}
    notes.note([("r", 8, first.id, None)], {("r", 8): None})  # deleted
    assert notes.edits("r", 5, 8) == {first.id: None}  # the newest revision's wins
    assert notes.edits("r", 7, 8) == {first.id: None}
    notes.note([("r", 9, moved.id, None)])  # a write that named its binding but did not give it
    assert notes.edits("r", 5, 9) is None
    assert notes.changed("r", 5, 9) == frozenset({first.id, moved.id})  # still named
    notes.note([("r", 10, None, None)])  # a write that said nothing
    assert notes.edits("r", 9, 10) is None
    assert notes.edits("r", 10, 9) is None
    notes.note(
        [("r", 10 + n, moved.id, None) for n in range(1, CONTENTS_PER_ROUTER + 2)],
        {("r", 10 + n): moved for n in range(1, CONTENTS_PER_ROUTER + 2)},
    )
    newest = 10 + CONTENTS_PER_ROUTER + 1
    assert notes.edits("r", newest - CONTENTS_PER_ROUTER, newest) == {moved.id: moved}
    assert notes.edits("r", 10, newest) is None  # the oldest binding given is no longer kept
    assert notes.changed("r", 10, newest) == frozenset({moved.id})  # its note is
    notes.note(("r", newest + n, moved.id, None) for n in range(1, NOTES_PER_ROUTER + 1))
    assert notes.edits("r", 5, 8) is None  # the oldest notes went, with their bindings
    notes.forget(["r"])
    assert notes.edits("r", 9, 10) is None


class Setup:
    """An agent over the in-memory fake kernel, its reconciles run in the test's thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kernel = RefusingFake()
        self.kernel.add_namespace(NAMESPACE)
        self.source = LocalStoreSource(store)
        backend = NftablesBackend(self.kernel, owner="commits-test")
        self.agent = Agent(self.source, backend, CATALOG)
        self.router, self.ids = add_ftp_router(store, [2000 + i for i in range(20)], NAMESPACE)

    def reconcile(self) -> tuple[Action, str]:
        """As a worker does: the report held, then flushed."""
        self.source.hold_reports()
        try:
            result = self.agent.reconciler.reconcile(self.router.id)
        finally:
            assert self.source.flush_reports() == {}
        return result.action, result.sync

    def router_status(self) -> tuple[Status, str]:
        with self.store.unit_of_work(write=False) as repo:
            router = repo.get_router(self.router.id)
        return router.status, router.status_reason

    def binding_statuses(self) -> dict[str, Status]:
        with self.store.unit_of_work(write=False) as repo:
            return {b.id: b.status for b in repo.list_bindings(ListQuery(), self.router.id)}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    try:
        yield Setup(store)
    finally:
        store.close()


def test_an_added_binding_is_reported_without_writing_the_unchanged_router(setup: Setup) -> None:
    s = setup
    assert s.reconcile() == (Action.APPLIED, "full")
    assert s.router_status() == (Status.ACTIVE, "")
    with s.store.unit_of_work() as repo:
        added = repo.add_binding(
            new_binding(CATALOG, s.router, protocol="tcp", port=21, helper="ftp")
        ).id

    with Statements() as statements:
        assert s.reconcile() == (Action.APPLIED, "partial")

    assert [st for st in statements.seen if st.startswith("update routers")] == []
    assert len([st for st in statements.seen if st.startswith("update conntrack_helpers")]) == 1
    assert statements.touching("conntrack_helpers") == [
        st for st in statements.seen if st.startswith("update conntrack_helpers")
    ], "the reload read no binding"
    assert s.binding_statuses()[added] == Status.ACTIVE
    assert set(s.binding_statuses().values()) == {Status.ACTIVE}
    assert s.router_status() == (Status.ACTIVE, "")


def test_a_router_status_that_differs_from_the_report_is_still_written(setup: Setup) -> None:
    s = setup
    assert s.reconcile() == (Action.APPLIED, "full")
    with s.store.unit_of_work() as repo:
        revision = repo.get_router(s.router.id).revision_number
        repo.set_router_statuses([(s.router.id, revision, Status.ERROR, "left by hand")])
        added = repo.add_binding(
            new_binding(CATALOG, s.router, protocol="tcp", port=21, helper="ftp")
        ).id

    assert s.reconcile() == (Action.APPLIED, "partial")

    assert s.router_status() == (Status.ACTIVE, "")
    assert s.binding_statuses()[added] == Status.ACTIVE
