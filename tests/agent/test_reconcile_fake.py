"""reconcile() over the honest in-memory fake kernel: cases the real kernel cannot be made to
show on demand (a helper module it lacks, a transaction it refuses)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import RefusingFake

from cthm.agent import Action, Agent, LocalStoreSource
from cthm.domain import (
    Assignment,
    HelperCatalog,
    ListQuery,
    Protocol,
    Router,
    Status,
    new_binding,
    new_router,
)
from cthm.netfilter import NftablesBackend
from cthm.store import Store

NAMESPACE = "qrouter-fake"


class Setup:
    def __init__(self, store: Store, kernel: RefusingFake) -> None:
        self.store = store
        self.kernel = kernel
        self.backend = NftablesBackend(kernel)
        self.catalog = HelperCatalog()
        self.agent = Agent(LocalStoreSource(store), self.backend, self.catalog)
        with store.unit_of_work() as repo:
            self.router: Router = repo.add_router(
                new_router(name="r", project_id="p", namespace=NAMESPACE)
            )

    def bind(self, protocol: str, port: int, helper: str) -> str:
        with self.store.unit_of_work() as repo:
            binding = new_binding(
                self.catalog, self.router, protocol=protocol, port=port, helper=helper
            )
            return repo.add_binding(binding).id

    def statuses(self) -> tuple[tuple[Status, str], dict[str, tuple[Status, str]]]:
        with self.store.unit_of_work(write=False) as repo:
            router = repo.get_router(self.router.id)
            bindings = repo.list_bindings(ListQuery(), self.router.id)
        return (router.status, router.status_reason), {
            b.id: (b.status, b.status_reason) for b in bindings
        }


def make_setup(tmp_path: Path, helper_types: list[str] | None) -> Iterator[Setup]:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    kernel = RefusingFake(helper_types=helper_types)
    kernel.add_namespace(NAMESPACE)
    try:
        yield Setup(store, kernel)
    finally:
        store.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    yield from make_setup(tmp_path, None)


@pytest.fixture
def setup_without_sip(tmp_path: Path) -> Iterator[Setup]:
    yield from make_setup(tmp_path, ["ftp", "tftp"])


def test_binding_whose_helper_the_kernel_lacks_is_error_and_the_others_apply(
    setup_without_sip: Setup,
) -> None:
    s = setup_without_sip
    ftp = s.bind("tcp", 21, "ftp")
    sip = s.bind("udp", 5060, "sip")

    result = s.agent.reconciler.reconcile(s.router.id)

    assert result.action is Action.APPLIED
    table = s.backend.read(NAMESPACE)
    assert table is not None
    assert table.assignments == (Assignment(Protocol.TCP, 21, "ftp"),)
    router, bindings = s.statuses()
    assert router[0] is Status.ACTIVE
    assert router[1] == "1 of 2 bindings could not be applied"
    assert bindings[ftp] == (Status.ACTIVE, "")
    assert bindings[sip] == (Status.ERROR, "helper sip not available in this kernel")


def test_refused_transaction_keeps_the_previous_kernel_state_and_reports_why(
    setup: Setup,
) -> None:
    s = setup
    s.bind("tcp", 21, "ftp")
    s.agent.reconciler.reconcile(s.router.id)
    before = s.backend.read(NAMESPACE)
    added = s.bind("udp", 69, "tftp")
    s.kernel.refuse = True

    result = s.agent.reconciler.reconcile(s.router.id)

    assert result.action is Action.FAILED
    assert result.retry
    assert s.backend.read(NAMESPACE) == before
    router, bindings = s.statuses()
    assert router[0] is Status.ERROR
    assert "Cannot allocate memory" in router[1]
    assert bindings[added][0] is Status.ERROR

    s.kernel.refuse = False  # the cause goes away: the next attempt repairs and clears the error
    assert s.agent.reconciler.reconcile(s.router.id).action is Action.APPLIED
    router, bindings = s.statuses()
    assert router == (Status.ACTIVE, "")
    assert all(status == (Status.ACTIVE, "") for status in bindings.values())


def test_in_sync_router_costs_no_kernel_write_and_no_status_write(setup: Setup) -> None:
    s = setup
    s.bind("tcp", 21, "ftp")
    s.agent.reconciler.reconcile(s.router.id)
    writes = s.kernel.writes
    notified: list[frozenset[str]] = []
    s.store.subscribe(notified.append)
    with s.store.unit_of_work(write=False) as repo:
        revision = repo.get_router(s.router.id).revision_number

    for _ in range(3):
        assert s.agent.reconciler.reconcile(s.router.id).action is Action.NOOP

    assert s.kernel.writes == writes
    with s.store.unit_of_work(write=False) as repo:
        assert repo.get_router(s.router.id).revision_number == revision
    assert notified == []


def test_deleted_router_whose_namespace_is_gone_clears_its_tombstone(setup: Setup) -> None:
    s = setup
    s.bind("tcp", 21, "ftp")
    s.agent.reconciler.reconcile(s.router.id)
    with s.store.unit_of_work() as repo:
        repo.delete_router(s.router.id)
    s.kernel.remove_namespace(NAMESPACE)

    assert s.agent.reconciler.reconcile(s.router.id).action is Action.REMOVED
    with s.store.unit_of_work(write=False) as repo:
        assert repo.tombstones() == {}
