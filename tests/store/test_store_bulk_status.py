"""The agents' cold-sync status reports in the store (both databases): many routers' and
bindings' statuses written by one statement per table (chunks on SQLite), each row still
guarded by its revision and its reason cleaned."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from cthm.domain import HelperBinding, Router, Status
from cthm.store import Store
from cthm.store.repository import _STATUS_CHUNK
from support.databases import PlainSql

MakeRouter = Callable[..., Router]
MakeBinding = Callable[..., HelperBinding]


def statuses(
    store: Store, router: Router
) -> tuple[tuple[Status, str], dict[str, tuple[Status, str]]]:
    with store.unit_of_work(write=False) as repo:
        stored = repo.get_router(router.id)
        bindings, _ = repo.desired_bindings(router.id)
    return (stored.status, stored.status_reason), {
        b.id: (b.status, b.status_reason) for b in bindings
    }


def test_many_statuses_are_written_at_once_each_guarded_by_its_revision(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    first, second = make_router("a"), make_router("b")
    one = make_binding(first, port=21)
    two = make_binding(first, port=2121)
    three = make_binding(second, port=21)
    with store.unit_of_work() as repo:  # the user moved `two` on: revision 2
        repo.update_binding(first.id, two.id, port=2122)
        revisions = {r.id: r.revision_number for r in map(repo.get_router, (first.id, second.id))}
    with store.unit_of_work() as repo:
        repo.set_router_statuses(
            [
                (first.id, revisions[first.id], Status.ACTIVE, ""),
                (second.id, revisions[second.id] - 1, Status.ACTIVE, ""),  # stale: not written
            ]
        )
        repo.set_binding_statuses(
            [
                (one.id, 1, Status.ERROR, "kernel said\nno\x1b"),
                (two.id, 1, Status.ACTIVE, ""),  # stale: not written
                (three.id, 1, Status.PENDING, "first"),
                (three.id, 1, Status.ACTIVE, ""),  # the same row again: the last one counts
            ]
        )
        repo.set_binding_statuses([])  # nothing: no statement
    router_a, bindings_a = statuses(store, first)
    router_b, bindings_b = statuses(store, second)
    assert router_a == (Status.ACTIVE, "")
    assert router_b == (Status.PENDING, "")
    assert bindings_a == {one.id: (Status.ERROR, "kernel said no "), two.id: (Status.PENDING, "")}
    assert bindings_b == {three.id: (Status.ACTIVE, "")}


def test_more_rows_than_one_statement_holds_are_all_written(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql
) -> None:
    seed = make_router("r0")
    # The others are copies of its row made by hand in one statement: stored one by one they
    # took 15-25 s (six statements and a commit each), which is not what this test is about.
    copies = [(str(uuid.UUID(int=n)), f"r{n}", f"ns-{n}") for n in range(1, _STATUS_CHUNK + 3)]
    values = ", ".join(["(?, ?, ?)"] * len(copies))
    plain_sql(
        "INSERT INTO routers (id, name, project_id, namespace, status, status_reason, "
        "revision_number, created_at, updated_at) "
        "SELECT v.column1, v.column2, r.project_id, v.column3, r.status, r.status_reason, "
        f"r.revision_number, r.created_at, r.updated_at FROM routers r, (VALUES {values}) AS v "
        "WHERE r.id = ?",
        *(field for copy in copies for field in copy),
        seed.id,
    )
    ids = [seed.id, *(router_id for router_id, _, _ in copies)]
    assert plain_sql("SELECT status, COUNT(*) FROM routers GROUP BY status") == [
        (Status.PENDING.value, len(ids))
    ]
    assert len(ids) > _STATUS_CHUNK
    with store.unit_of_work() as repo:
        repo.set_router_statuses((i, seed.revision_number, Status.ACTIVE, "") for i in ids)
    assert plain_sql("SELECT status, COUNT(*) FROM routers GROUP BY status") == [
        (Status.ACTIVE.value, len(ids))
    ]
    with store.unit_of_work(write=False) as repo:  # and the store reads them so
        assert repo.get_router(ids[-1]).status == Status.ACTIVE
