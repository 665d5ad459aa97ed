"""Several threads writing to one router at once: nothing lost, nothing "database is locked"."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cthm.domain import (
    BindingConflict,
    HelperBinding,
    HelperCatalog,
    ListQuery,
    Router,
    new_binding,
)
from cthm.store import Store
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


def test_concurrent_writers_on_one_router_lose_nothing(
    store: Store, make_router: Callable[..., Router]
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
                    repo.add_binding(
                        new_binding(CATALOG, router, protocol="tcp", port=port, helper="ftp")
                    )

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
    # Readers saw consistent, never-shrinking states.
    assert reads == sorted(reads)
    assert all(0 <= count <= THREADS * INSERTS for count in reads)


def test_concurrent_duplicates_give_one_binding_and_conflicts_naming_it(
    store: Store, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    created: list[HelperBinding] = []

    def add() -> None:
        with store.unit_of_work() as repo:
            created.append(
                repo.add_binding(
                    new_binding(CATALOG, router, protocol="udp", port=69, helper="tftp")
                )
            )

    errors = run_threads([add] * THREADS)
    assert len(created) == 1
    assert len(errors) == THREADS - 1
    for error in errors:
        assert isinstance(error, BindingConflict), repr(error)
        assert error.existing_id == created[0].id
    with store.unit_of_work(write=False) as repo:
        assert repo.list_bindings(ListQuery(), router_id=router.id) == created
        assert repo.get_router(router.id).revision_number == 2


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
