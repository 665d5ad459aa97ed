"""An API write's way to the kernel (issue 14): when every revision since the agent's last
desired state is a binding write of this process and nothing said the router may have changed
otherwise, reload() reads nothing at all: the router's row too comes from the revision notes
(its revision and updated_at; a binding write moves nothing else). Whatever the notes cannot
vouch for is read, and the result is always the one a read gives (reload() == load())."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_support import RefusingFake, Statements, add_ftp_router

from cthm.agent import Action, Agent, LocalStoreSource
from cthm.agent.ports import DesiredRouter
from cthm.domain import HelperCatalog, Router, Status, new_binding, new_router
from cthm.netfilter import NftablesBackend
from cthm.store import Store
from cthm.store.revisions import RevisionNotes

CATALOG = HelperCatalog()
NAMESPACE = "qrouter-noread"


def reload(source: LocalStoreSource, last: DesiredRouter) -> tuple[DesiredRouter, list[str]]:
    """reload() and the statements it ran."""
    with Statements() as statements:
        reloaded = source.reload(last.router.id, last)
    assert reloaded is not None
    return reloaded, statements.seen


def add(store: Store, router: Router, port: int, protocol: str = "tcp") -> str:
    helper = "ftp" if protocol == "tcp" else "tftp"
    with store.unit_of_work() as repo:
        binding = new_binding(CATALOG, router, protocol=protocol, port=port, helper=helper)
        return repo.add_binding(binding).id


def test_own_binding_writes_are_reloaded_with_no_statement_as_a_read_gives_them(
    store: Store,
) -> None:
    source = LocalStoreSource(store)
    router, ids = add_ftp_router(store, [21, 2121, 3000], NAMESPACE)
    last = source.load(router.id)
    assert last is not None
    added = add(store, router, 69, "udp")  # as the API writes: one unit of work each
    with store.unit_of_work() as repo:
        repo.update_binding(router.id, ids[2], port=3001)
    with store.unit_of_work() as repo:
        repo.delete_binding(router.id, ids[0])

    reloaded, statements = reload(source, last)

    assert statements == []
    assert reloaded == source.load(router.id)  # the router's row too (revision, updated_at)
    assert reloaded.router.revision_number == last.router.revision_number + 3
    assert [(b.id, b.port) for b in reloaded.bindings] == [
        (ids[1], 2121),
        (ids[2], 3001),
        (added, 69),
    ]
    # And from that state on (the agent keeps what reload gave it): still nothing read.
    with store.unit_of_work() as repo:  # several revisions in one unit of work
        first = repo.add_binding(
            new_binding(CATALOG, router, protocol="tcp", port=4000, helper="ftp")
        ).id
        repo.delete_binding(router.id, ids[1])
    again, statements = reload(source, reloaded)
    assert statements == []
    assert again == source.load(router.id)
    assert first in {b.id for b in again.bindings}


def test_another_process_write_before_ours_is_read(store: Store, database_url: str) -> None:
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
    add(store, router, 4000)  # ours after it: the notes hold a gap

    reloaded, statements = reload(source, last)

    assert any(" from routers" in s for s in statements)
    assert reloaded == source.load(router.id)
    assert [b.port for b in reloaded.bindings] == [21, 2222, 4000]


def test_another_process_write_after_ours_is_read_once_the_change_feed_tells_it(
    store: Store, database_url: str
) -> None:
    if store.dialect != "postgresql":
        pytest.skip("SQLite's writers notify no other process (seen at a gap, or a full sync)")
    told = threading.Event()
    store.subscribe(lambda routers: told.set() if routers else None)
    source = LocalStoreSource(store)
    router, _ids = add_ftp_router(store, [21], NAMESPACE)
    last = source.load(router.id)
    assert last is not None
    add(store, router, 4000)  # ours: noted
    told.clear()
    other = Store(database_url)
    try:
        with other.unit_of_work() as repo:  # then another process's, noted nowhere here
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=5000, helper="ftp"))
    finally:
        other.close()
    assert told.wait(10), "the listener tells this process of the other's commit"

    reloaded, statements = reload(source, last)

    assert any(" from routers" in s for s in statements)
    assert reloaded == source.load(router.id)
    assert [b.port for b in reloaded.bindings] == [21, 4000, 5000]


def test_a_router_status_written_since_the_read_makes_the_reload_read(store: Store) -> None:
    source = LocalStoreSource(store)
    router, _ids = add_ftp_router(store, [21], NAMESPACE)
    last = source.load(router.id)
    assert last is not None
    with store.unit_of_work() as repo:  # no revision moves: only the status
        repo.set_router_statuses([(router.id, last.router.revision_number, Status.ERROR, "x")])
    add(store, router, 4000)

    reloaded, statements = reload(source, last)

    assert any(" from routers" in s for s in statements)
    assert (reloaded.router.status, reloaded.router.status_reason) == (Status.ERROR, "x")
    assert reloaded == source.load(router.id)


def test_a_router_deleted_and_created_again_is_read(store: Store) -> None:
    source = LocalStoreSource(store)
    router, _ids = add_ftp_router(store, [21], NAMESPACE)
    last = source.load(router.id)
    assert last is not None
    with store.unit_of_work() as repo:
        repo.delete_router(router.id)
    with store.unit_of_work() as repo:  # the same id again, with bindings: revisions 1 to 4
        again = repo.add_router(
            new_router(name="back", project_id="p", namespace="qrouter-other", router_id=router.id)
        )
        for port in (30, 31, 32):
            repo.add_binding(new_binding(CATALOG, again, protocol="tcp", port=port, helper="ftp"))
    add(store, again, 4000)

    with Statements() as statements:
        reloaded = source.reload(router.id, last)

    assert statements.seen
    assert reloaded == source.load(router.id)
    assert reloaded is not None
    assert reloaded.router.namespace == "qrouter-other"
    assert [b.port for b in reloaded.bindings] == [30, 31, 32, 4000]


def test_notes_vouch_for_a_router_only_while_trusted_and_complete() -> None:
    notes = RevisionNotes()
    router = new_router(name="r", project_id="p", namespace=NAMESPACE)
    binding = new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp")
    moved = router.revision_number + 1
    committed = datetime.now(UTC)
    notes.note([(router.id, moved, binding.id, committed)], {(router.id, moved): binding})
    assert notes.router_edits(router) is None  # never read: not trusted
    began = notes.reading()
    notes.distrust([router.id])  # e.g. another process's commit, told while the read ran
    notes.read(router.id, began)
    assert notes.router_edits(router) is None
    notes.read(router.id, notes.reading())
    vouched = notes.router_edits(router)
    assert vouched is not None
    assert (vouched[0].revision_number, vouched[0].updated_at) == (moved, committed)
    assert vouched[1] == {binding.id: binding}
    assert notes.router_edits(vouched[0]) is None  # nothing newer of ours: read
    notes.distrust(None)  # the change feed could not say which routers
    assert notes.router_edits(router) is None
    notes.read(router.id, notes.reading())
    notes.note([(router.id, moved, binding.id, None)], {(router.id, moved): binding})
    assert notes.router_edits(router) is None  # its updated_at not given: not vouched for


def test_notes_of_a_router_of_the_same_id_before_are_never_joined_to_new_ones() -> None:
    notes = RevisionNotes()
    router = new_router(name="r", project_id="p", namespace=NAMESPACE)
    old = new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp")
    new = new_binding(CATALOG, router, protocol="tcp", port=22, helper="ftp")
    at = datetime.now(UTC)
    notes.note(
        [(router.id, revision, old.id, at) for revision in range(1, 9)],
        {(router.id, revision): old for revision in range(1, 9)},
    )
    # Deleted (by another process: no note of it here) and created again at revision 1.
    notes.note([(router.id, 2, new.id, at)], {(router.id, 2): new})
    notes.read(router.id, notes.reading())
    recreated = replace(router, revision_number=1)
    vouched = notes.router_edits(recreated)
    assert vouched is not None
    assert vouched[0].revision_number == 2
    assert vouched[1] == {new.id: new}


class Setup:
    """An agent over a fake kernel that lacks tftp, its reconciles run in the test's thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.kernel = RefusingFake(helper_types=["ftp"])
        self.kernel.add_namespace(NAMESPACE)
        self.source = LocalStoreSource(store)
        self.agent = Agent(self.source, NftablesBackend(self.kernel, owner="noread"), CATALOG)
        self.router, self.ids = add_ftp_router(store, [2000 + i for i in range(5)], NAMESPACE)

    def reconcile(self) -> tuple[Action, str, list[str]]:
        """As a worker does (the report held, then flushed), and the statements it ran."""
        with Statements() as statements:
            self.source.hold_reports()
            try:
                result = self.agent.reconciler.reconcile(self.router.id)
            finally:
                assert self.source.flush_reports() == {}
        return result.action, result.sync, statements.seen

    def router_status(self) -> tuple[Status, str]:
        with self.store.unit_of_work(write=False) as repo:
            router = repo.get_router(self.router.id)
        return router.status, router.status_reason


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    try:
        yield Setup(store)
    finally:
        store.close()


def reads_router(statements: list[str]) -> bool:
    return any(s.startswith("select") and " from routers" in s for s in statements)


def test_the_agents_own_router_status_reports_are_never_taken_as_stale(setup: Setup) -> None:
    s = setup
    assert s.reconcile()[:2] == (Action.APPLIED, "full")  # PENDING -> ACTIVE written
    add(s.store, s.router, 21)
    action, sync, statements = s.reconcile()
    assert (action, sync) == (Action.APPLIED, "partial")
    assert reads_router(statements), "its own status report moved the row: read once"
    add(s.store, s.router, 22)
    action, sync, statements = s.reconcile()
    assert (action, sync) == (Action.APPLIED, "partial")
    assert not reads_router(statements)
    assert s.router_status() == (Status.ACTIVE, "")

    # A binding the kernel cannot hold: the router's reason changes, with no new revision.
    tftp = add(s.store, s.router, 69, "udp")
    s.reconcile()
    assert s.router_status() == (Status.ACTIVE, "1 of 8 bindings could not be applied")
    with s.store.unit_of_work() as repo:
        repo.delete_binding(s.router.id, tftp)
    action, _sync, statements = s.reconcile()

    assert reads_router(statements)
    assert s.router_status() == (Status.ACTIVE, ""), "the reason reported is taken back"
    add(s.store, s.router, 23)
    assert s.reconcile()[:2] == (Action.APPLIED, "partial")
    assert s.router_status() == (Status.ACTIVE, "")
