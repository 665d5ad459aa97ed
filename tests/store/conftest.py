"""A migrated store on a real SQLite file per test, and small builders of stored objects."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cthm.domain import HelperBinding, Router, new_binding, new_router
from cthm.store import Store
from support.store import CATALOG, Snapshot


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cthm.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{db_path}")
    store.migrate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def make_router(store: Store) -> Callable[..., Router]:
    def make(name: str = "r", project_id: str = "p", namespace: str | None = None) -> Router:
        with store.unit_of_work() as repo:
            router = new_router(name=name, project_id=project_id, namespace=namespace)
            return repo.add_router(router)

    return make


@pytest.fixture
def make_binding(store: Store) -> Callable[..., HelperBinding]:
    def make(
        router: Router, protocol: str = "tcp", port: int = 21, helper: str = "ftp"
    ) -> HelperBinding:
        with store.unit_of_work() as repo:
            binding = new_binding(CATALOG, router, protocol=protocol, port=port, helper=helper)
            return repo.add_binding(binding)

    return make


@pytest.fixture
def snapshot(db_path: Path) -> Callable[[], Snapshot]:
    """Every row of every cthm table, read with plain sqlite3 (not through the code under test)."""

    def take() -> Snapshot:
        connection = sqlite3.connect(db_path)
        try:
            return {
                table: sorted(connection.execute(f"SELECT * FROM {table}").fetchall())
                for table in ("routers", "conntrack_helpers", "router_tombstones")
            }
        finally:
            connection.close()

    return take


@pytest.fixture
def notifications(store: Store) -> list[frozenset[str]]:
    """Every change notification the store sends, in order."""
    received: list[frozenset[str]] = []
    store.subscribe(received.append)
    return received
