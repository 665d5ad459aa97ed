"""A migrated store per test, on a real SQLite file and on a PostgreSQL database (the
`database_url` fixture of tests/conftest.py), and small builders of stored objects.

`db_path` is the SQLite file, for the tests about the file itself (support.databases.sqlite_only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cthm.domain import HelperBinding, Router, new_binding, new_router
from cthm.store import Store
from support.databases import PlainSql, in_process, kind_of
from support.store import CATALOG, Snapshot


@pytest.fixture
def db_path(tmp_path: Path, database_url: str) -> Path:
    """The SQLite file of `store`: a test that reads or changes it by hand runs on SQLite only
    (plain_sql reads rows on either database)."""
    if kind_of(database_url) != "sqlite":
        pytest.skip("works on the SQLite file itself (db_path); plain_sql reads both databases")
    return tmp_path / "cthm.db"


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
def plain_sql(database_url: str) -> PlainSql:
    """Statements on the test's database by hand (sqlite3 / psycopg), not through the store."""
    return PlainSql(database_url)


@pytest.fixture
def snapshot(plain_sql: PlainSql) -> Callable[[], Snapshot]:
    """Every row of every cthm table, read by hand (not through the code under test)."""

    def take() -> Snapshot:
        return {
            table: sorted(plain_sql(f"SELECT * FROM {table}"))
            for table in ("routers", "conntrack_helpers", "router_tombstones")
        }

    return take


@pytest.fixture
def notifications(store: Store) -> list[frozenset[str]]:
    """Every change notification the store sends for its own commits, in order."""
    received: list[frozenset[str]] = []
    store.subscribe(in_process(received.append))  # on PostgreSQL: not its listener's calls
    return received
