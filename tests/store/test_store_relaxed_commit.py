"""unit_of_work(durable=False): the agents' status reports are committed without waiting for
the disk (SQLite: synchronous=NORMAL in WAL mode; PostgreSQL: synchronous_commit off), while
every other write keeps its fsync, on the same pooled connections (both databases)."""

from __future__ import annotations

import pytest

from cthm.domain import ListQuery, new_router
from cthm.store import Repository, Store
from support.databases import kind_of


def durability(repo: Repository, database_url: str) -> str:
    """The commit durability in force for the unit of work's own transaction."""
    connection = repo._session.connection()
    if kind_of(database_url) == "sqlite":
        level = connection.exec_driver_sql("PRAGMA synchronous").scalar_one()
        return {1: "NORMAL", 2: "FULL"}.get(level, str(level))
    return str(connection.exec_driver_sql("SHOW synchronous_commit").scalar())


def names(store: Store) -> set[str]:
    with store.unit_of_work(write=False) as repo:
        return {r.name for r in repo.list_routers(ListQuery())}


def test_relaxed_writes_commit_visibly_and_durable_ones_keep_their_fsync(
    store: Store, database_url: str
) -> None:
    relaxed, durable = ("NORMAL", "FULL") if kind_of(database_url) == "sqlite" else ("off", "on")
    # Alternating, so pooled connections go from one kind to the other and back.
    kinds = ["relaxed", "durable", "durable", "relaxed", "relaxed", "durable"]
    for index, kind in enumerate(kinds):
        with store.unit_of_work(durable=kind == "durable") as repo:
            assert durability(repo, database_url) == (durable if kind == "durable" else relaxed)
            repo.add_router(new_router(name=f"{kind}{index}", project_id="p"))
        # Committed, and visible to every reader at once.
        assert f"{kind}{index}" in names(store)
    assert len(names(store)) == len(kinds)


def test_a_relaxed_unit_of_work_that_raises_writes_nothing(store: Store) -> None:
    def write_then_fail() -> None:
        with store.unit_of_work(durable=False) as repo:
            repo.add_router(new_router(name="undone", project_id="p"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert "undone" not in names(store)
