"""Several threads writing to one router at once: nothing lost, nothing "database is locked"."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from cthm.domain import (
    BindingConflict,
    HelperBinding,
    HelperCatalog,
    ListQuery,
    Router,
    new_binding,
)
from cthm.store import Repository, Store
from support.databases import in_process

CATALOG = HelperCatalog()
THREADS = 4
INSERTS = 25
JOIN_TIMEOUT = 90.0


def run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Starts every target together; returns what they raised. Bounded by JOIN_TIMEOUT."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets), timeout=JOIN_TIMEOUT)

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    return errors


def add(
    repo: Repository, router: Router, port: int, protocol: str, *, as_api: bool
) -> HelperBinding:
    """A binding added as the store's other callers do, or as the API's create does: the router
    read in the unit first, the create its last change (on PostgreSQL the change log's lock and
    row in the create's statement)."""
    helper = "tftp" if protocol == "udp" else "ftp"
    if not as_api:
        return repo.add_binding(
            new_binding(CATALOG, router, protocol=protocol, port=port, helper=helper)
        )
    read = repo.get_router(router.id)
    wanted = new_binding(CATALOG, read, protocol=protocol, port=port, helper=helper)
    return repo.add_binding(wanted, router=read, last_change=True)


@pytest.mark.parametrize("as_api", [False, True], ids=["store", "api"])
def test_concurrent_writers_on_one_router_lose_nothing(
    store: Store, make_router: Callable[..., Router], as_api: bool
) -> None:
    router = make_router()
    received: list[frozenset[str]] = []
    store.subscribe(in_process(received.append))
    reads: list[int] = []

    def writer(index: int) -> Callable[[], None]:
        def write() -> None:
            for i in range(INSERTS):
                port = 1000 + index * INSERTS + i
                with store.unit_of_work() as repo:
                    add(repo, router, port, "tcp", as_api=as_api)

        return write

    def reader() -> None:
        for _ in range(INSERTS):
            with store.unit_of_work(write=False) as repo:
                reads.append(len(repo.list_bindings(ListQuery(), router_id=router.id)))

    errors = run_threads([*[writer(i) for i in range(THREADS)], reader])
    assert errors == []
    with store.unit_of_work(write=False) as repo:
        stored = repo.list_bindings(ListQuery(), router_id=router.id)
        final = repo.get_router(router.id)
    assert sorted(b.port for b in stored) == list(range(1000, 1000 + THREADS * INSERTS))
    # Every insert bumped the router once: no lost update of revision_number.
    assert final.revision_number == 1 + THREADS * INSERTS
    assert received == [frozenset({router.id})] * (THREADS * INSERTS)
    with store.unit_of_work(write=False) as repo:
        changes = repo.hosts.changes_since(0, None, 10 * THREADS * INSERTS)
    # One change-log row per create, in the order of the router's revisions (commit order).
    assert [c.router_id for c in changes] == [router.id] * (1 + THREADS * INSERTS)
    # Readers saw consistent, never-shrinking states.
    assert reads == sorted(reads)
    assert all(0 <= count <= THREADS * INSERTS for count in reads)


@pytest.mark.parametrize("as_api", [False, True], ids=["store", "api"])
def test_concurrent_duplicates_give_one_binding_and_conflicts_naming_it(
    store: Store, make_router: Callable[..., Router], as_api: bool
) -> None:
    """With the API's create the losers wait for the winner's binding inside the statement that
    takes the change log's lock: a lock taken before that wait would deadlock (a Conflict)."""
    router = make_router()
    created: list[HelperBinding] = []

    def add_one() -> None:
        with store.unit_of_work() as repo:
            created.append(add(repo, router, 69, "udp", as_api=as_api))

    errors = run_threads([add_one] * THREADS)
    assert len(created) == 1
    assert len(errors) == THREADS - 1
    for error in errors:
        assert isinstance(error, BindingConflict), repr(error)
        assert error.existing_id == created[0].id
    with store.unit_of_work(write=False) as repo:
        assert repo.list_bindings(ListQuery(), router_id=router.id) == created
        assert repo.get_router(router.id).revision_number == 2


def test_api_creates_and_updates_of_one_router_at_once_all_commit(
    store: Store, make_router: Callable[..., Router], make_binding: Callable[..., HelperBinding]
) -> None:
    """Updates take the change log's lock last, just before their commit; the API's creates in
    their one statement, after the router's row: neither waits for a lock the other holds."""
    router = make_router()
    owned = [make_binding(router, port=3000 + index) for index in range(THREADS)]

    def creator(index: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(INSERTS):
                with store.unit_of_work() as repo:
                    add(repo, router, 1000 + index * INSERTS + i, "tcp", as_api=True)

        return run

    def updater(index: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(INSERTS):
                with store.unit_of_work() as repo:
                    repo.update_binding(router.id, owned[index].id, port=5000 + index * INSERTS + i)

        return run

    errors = run_threads([*map(creator, range(THREADS)), *map(updater, range(THREADS))])
    assert errors == []
    writes = 2 * THREADS * INSERTS
    with store.unit_of_work(write=False) as repo:
        final = repo.get_router(router.id)
        stored = repo.list_bindings(ListQuery(), router_id=router.id)
        changes = repo.hosts.changes_since(0, None, 10 * writes)
    assert final.revision_number == 1 + THREADS + writes
    assert len(stored) == THREADS + THREADS * INSERTS
    assert len(changes) == 1 + THREADS + writes


def test_concurrent_renames_are_all_counted(
    store: Store, make_router: Callable[..., Router]
) -> None:
    router = make_router(name="start")

    def rename(index: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(INSERTS):
                with store.unit_of_work() as repo:
                    repo.update_router(router.id, name=f"t{index}-{i}")

        return run

    errors = run_threads([rename(i) for i in range(THREADS)])
    assert errors == []
    with store.unit_of_work(write=False) as repo:
        final = repo.get_router(router.id)
    assert final.revision_number == 1 + THREADS * INSERTS
    assert final.name in {f"t{t}-{INSERTS - 1}" for t in range(THREADS)}
