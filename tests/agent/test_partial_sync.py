"""Full and partial syncs (issue 14) over the honest in-memory fake kernel: which one a
reconcile does, what it reads and writes (the fake's record of every run), and that whatever a
partial sync cannot do or cannot verify ends in a full sync that repairs the table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_support import RefusingFake
from sqlalchemy import Engine, create_engine, event, update

from cthm.agent import Action, Agent, InvalidDesiredState, LocalStoreSource
from cthm.domain import (
    HelperCatalog,
    ListQuery,
    Router,
    Status,
    assignments_for,
    new_binding,
    new_router,
)
from cthm.netfilter import NftablesBackend
from cthm.store import Store
from cthm.store.tables import RouterRow

NAMESPACE = "qrouter-partial"
OTHER = "qrouter-partial2"
LIST_TABLE = "list table"


class Setup:
    def __init__(self, store: Store, kernel: RefusingFake) -> None:
        self.store = store
        self.kernel = kernel
        self.backend = NftablesBackend(kernel, owner="partial-test")
        self.catalog = HelperCatalog()
        self.agent = Agent(LocalStoreSource(store), self.backend, self.catalog)
        self.router = self.add_router("r", NAMESPACE)

    def add_router(self, name: str, namespace: str) -> Router:
        with self.store.unit_of_work() as repo:
            return repo.add_router(new_router(name=name, project_id="p", namespace=namespace))

    def bind(self, port: int, *, router: Router | None = None, helper: str = "ftp") -> str:
        protocol = "udp" if helper == "tftp" else "tcp"
        with self.store.unit_of_work() as repo:
            binding = new_binding(
                self.catalog, router or self.router, protocol=protocol, port=port, helper=helper
            )
            return repo.add_binding(binding).id

    def unbind(self, binding_id: str) -> None:
        with self.store.unit_of_work() as repo:
            repo.delete_binding(self.router.id, binding_id)

    def reconcile(self, router: Router | None = None) -> tuple[Action, str, list[str]]:
        """(action, sync, the commands the kernel was given)."""
        before = len(self.kernel.runs)
        result = self.agent.reconciler.reconcile((router or self.router).id)
        return result.action, result.sync, [r.commands for r in self.kernel.runs[before:]]

    def in_sync(self, router: Router | None = None) -> bool:
        router = router or self.router
        with self.store.unit_of_work(write=False) as repo:
            bindings = repo.list_bindings(ListQuery(), router.id)
        want = self.backend.desired(assignments_for(self.catalog, bindings))
        return self.backend.read(router.namespace) == want

    def statuses(self) -> set[Status]:
        with self.store.unit_of_work(write=False) as repo:
            return {b.status for b in repo.list_bindings(ListQuery(), self.router.id)}

    def by_hand(self, commands: str) -> None:
        """A change behind cthm's back (another tool, a person with nft)."""
        self.kernel.run(NAMESPACE, commands)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    kernel = RefusingFake()
    kernel.add_namespace(NAMESPACE)
    kernel.add_namespace(OTHER)
    try:
        yield Setup(store, kernel)
    finally:
        store.close()


def verified_with_many(s: Setup, count: int = 50) -> list[str]:
    ids = [s.bind(2000 + i) for i in range(count)]
    assert s.reconcile()[:2] == (Action.APPLIED, "full")
    return ids


def table_listings(commands: list[str]) -> int:
    return sum(1 for c in commands if c.startswith(LIST_TABLE))


def test_first_reconcile_is_full_and_the_next_change_is_a_partial_sync(setup: Setup) -> None:
    s = setup
    verified_with_many(s)

    added = s.bind(21)
    action, sync, commands = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "partial")
    assert table_listings(commands) == 0, "a partial sync never reads the whole table"
    writes = [c for c in commands if not c.startswith("list")]
    assert len(writes) == 1
    assert "add element" in writes[0]
    assert s.in_sync()
    assert s.statuses() == {Status.ACTIVE}

    s.unbind(added)
    action, sync, commands = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "partial")
    assert table_listings(commands) == 0
    writes = [c for c in commands if not c.startswith("list")]
    assert len(writes) == 1
    assert "delete element" in writes[0]
    assert s.in_sync()


def test_a_run_of_changes_stays_partial_and_in_sync(setup: Setup) -> None:
    s = setup
    ids = verified_with_many(s, 20)
    s.bind(69, helper="tftp")
    assert s.reconcile()[:2] == (Action.APPLIED, "full")  # a new set
    changes: list[Callable[[], object]] = [
        lambda: s.bind(21),  # before all others
        lambda: s.bind(70, helper="tftp"),
        lambda: s.unbind(ids[7]),  # from the middle
        lambda: s.bind(65535),  # after all others
        lambda: s.unbind(ids[0]),
    ]
    for change in changes:
        change()
        assert s.reconcile()[:2] == (Action.APPLIED, "partial")
        assert s.in_sync()
    assert s.agent.sync_all()[0].action is Action.NOOP


def test_a_new_helper_kind_needs_a_full_sync(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)
    s.bind(69, helper="tftp")  # a set, a helper object and a rule appear

    action, sync, _ = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "full")
    assert s.in_sync()


def test_unchanged_desired_state_reads_and_writes_nothing(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)

    action, sync, commands = s.reconcile()

    assert (action, sync, commands) == (Action.NOOP, "none", [])


def test_resync_reads_every_table_whole_and_writes_nothing_when_in_sync(setup: Setup) -> None:
    s = setup
    other = s.add_router("o", OTHER)
    s.bind(21, router=other)
    verified_with_many(s, 3)
    s.reconcile(other)
    before = len(s.kernel.runs)

    results = s.agent.sync_all()

    assert {(r.action, r.sync) for r in results} == {(Action.NOOP, "full")}
    commands = [r.commands for r in s.kernel.runs[before:]]
    assert table_listings(commands) >= 2
    assert all(c.startswith("list") for c in commands), "an in-sync resync writes nothing"


def test_drift_a_partial_sync_cannot_see_is_repaired_by_the_resync(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)
    s.by_hand("delete element inet cthm ingress-ftp-tcp { 2000 }")
    assert s.reconcile()[:2] == (Action.NOOP, "none")  # trusted until the resync looks

    [result] = s.agent.sync_all()

    assert (result.action, result.sync, result.drift) == (Action.APPLIED, "full", True)
    assert s.in_sync()


def test_refused_partial_sync_falls_back_to_a_full_sync_that_repairs(setup: Setup) -> None:
    s = setup
    ids = verified_with_many(s, 3)
    s.by_hand("delete element inet cthm ingress-ftp-tcp { 2000 }")
    s.unbind(ids[0])  # its delete element now fails (ENOENT): the transaction is refused,
    s.bind(21)  # and with it this add

    action, sync, commands = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "full")
    assert table_listings(commands) >= 1
    assert s.in_sync()


def test_partial_read_back_that_differs_falls_back_to_a_full_sync(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)
    s.by_hand("delete element inet cthm ingress-ftp-tcp { 2001 }")
    s.bind(21)  # the partial adds 21 and reads the set back: 2001 is missing

    action, sync, _ = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "full")
    assert s.in_sync()
    assert s.reconcile()[:2] == (Action.NOOP, "none")


def test_after_a_failure_the_next_sync_is_full(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)
    s.bind(21)
    s.kernel.refuse = True
    assert s.reconcile()[0] is Action.FAILED
    s.kernel.refuse = False

    action, sync, commands = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "full")
    assert table_listings(commands) >= 1
    assert s.in_sync()
    assert s.statuses() == {Status.ACTIVE}


def test_a_new_namespace_needs_a_full_sync(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)
    engine = create_engine(s.store.url)
    with engine.begin() as connection:  # no API changes a namespace: moved by hand
        connection.execute(
            update(RouterRow)
            .where(RouterRow.id == s.router.id)
            .values(namespace=OTHER, revision_number=RouterRow.revision_number + 1)
        )
    engine.dispose()

    action, sync, _ = s.reconcile()

    assert (action, sync) == (Action.APPLIED, "full")
    assert s.backend.read(OTHER) is not None


def test_a_change_announced_after_the_resync_read_is_not_lost(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 3)
    reconciler = s.agent.reconciler
    sequence = reconciler.sequence()
    stale = s.agent._source.load_all()  # the resync's read, before the change commits
    s.bind(21)
    s.agent.enqueue([s.router.id])  # the change's announcement
    reconciler.preload(stale, sequence)

    s.reconcile()

    assert s.in_sync()
    assert s.backend.read(NAMESPACE) is not None
    assert 21 in {a.port for a in s.backend.read(NAMESPACE).assignments}  # type: ignore[union-attr]


def resync_statements(s: Setup) -> int:
    """The SQL statements one in-sync resync (sync_all) of every router runs."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        results = s.agent.sync_all()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert {r.action for r in results} == {Action.NOOP}
    return len(statements)


def test_a_resync_reads_desired_state_at_once_not_per_router(setup: Setup) -> None:
    s = setup
    verified_with_many(s, 5)
    s.agent.sync_all()
    one = resync_statements(s)
    for index in range(4):
        namespace = f"qrouter-more{index}"
        s.kernel.add_namespace(namespace)
        router = s.add_router(f"more{index}", namespace)
        s.bind(21, router=router)
    s.agent.sync_all()

    assert resync_statements(s) == one  # five routers cost what one did


# --- the local source: reload() and load_all() give what load() gives -------------------


def comparable(desired: object) -> object:
    if isinstance(desired, InvalidDesiredState):
        return ("invalid", desired.router_id, desired.revision_number, desired.reason)
    return desired


def test_reload_and_load_all_equal_load(database_url: str) -> None:
    store = Store(database_url)
    store.migrate()
    catalog = HelperCatalog()
    source = LocalStoreSource(store)
    try:
        with store.unit_of_work() as repo:
            router = repo.add_router(new_router(name="r", project_id="p", namespace="qr-a"))
            empty = repo.add_router(new_router(name="e", project_id="p", namespace="qr-b"))
            ids = [
                repo.add_binding(
                    new_binding(catalog, router, protocol="tcp", port=p, helper="ftp")
                ).id
                for p in (2121, 21, 3000, 990)
            ]
        last = source.load(router.id)
        assert last is not None
        same = source.reload(router.id, last)
        assert same is not None
        assert same.bindings is last.bindings  # nothing read again

        with store.unit_of_work() as repo:
            repo.delete_binding(router.id, ids[0])
            repo.add_binding(new_binding(catalog, router, protocol="udp", port=69, helper="tftp"))
        reloaded = source.reload(router.id, last)
        assert reloaded == source.load(router.id)
        assert reloaded is not None
        assert [b.port for b in reloaded.bindings] == [21, 990, 3000, 69]

        everything = source.load_all()
        assert set(everything) == {router.id, empty.id}
        for router_id, desired in everything.items():
            assert comparable(desired) == comparable(source.load(router_id))

        with store.unit_of_work() as repo:
            repo.delete_router(router.id)
        assert source.reload(router.id, last) is None
    finally:
        store.close()
