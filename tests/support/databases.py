"""The databases the store, API and change-feed suites run on: a SQLite file, or a PostgreSQL
database copied from a migrated template, made per test by tests/conftest.py's `database_url`
(parametrized: ids `sqlite` and `postgresql`).

PostgreSQL is a throwaway cluster per xdist worker (cthm.testing.PostgresCluster), started the
first time one of that worker's tests needs it; or, when CTHM_TEST_DATABASE_URL names a server,
databases created in that server (its role needs CREATEDB) and dropped again.

Rows are read back "by hand" (not through the code under test) with `PlainSql`, on either
database.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
from _pytest.mark.structures import MarkDecorator
from psycopg import sql
from sqlalchemy.engine import make_url

from cthm.store import Store
from cthm.testing import PostgresCluster

LISTENER_THREAD = "cthm-change-listener"
"""The thread of the store's LISTEN connection on PostgreSQL (cthm.store.listener)."""

DATABASES = ("sqlite", "postgresql")
"""The `database_url` fixture's parameters, and its test ids."""
EXTERNAL_URL_ENV = "CTHM_TEST_DATABASE_URL"


def sqlite_only(reason: str) -> MarkDecorator:
    """For a test that is about the SQLite file itself (reads, moves or breaks the file, its
    WAL, PRAGMAs, file modes): `database_url` runs it on SQLite only. `reason` says why (kept
    in the source; there is no skipped PostgreSQL item to show it on)."""
    assert reason
    return pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def in_process(callback: Callable[[frozenset[str]], None]) -> Callable[[frozenset[str]], None]:
    """A Store.subscribe callback that hears only this process's commits, in the committing
    thread: on PostgreSQL the store also calls its subscribers from its listener's thread (for
    every process's commits, its own a second time, and after each (re)connect), which tests of
    the in-process notification must not count."""

    def heard(router_ids: frozenset[str]) -> None:
        if threading.current_thread().name != LISTENER_THREAD:
            callback(router_ids)

    return heard


def kind_of(url: str) -> str:
    """ "sqlite" or "postgresql"."""
    return make_url(url).get_backend_name()


class PostgresServer(Protocol):
    def create_database(self, name: str, *, empty: bool = False) -> str: ...

    def drop_database(self, name: str) -> None: ...

    def close(self) -> None: ...


class OwnCluster:
    """This worker's throwaway cluster, in a directory of its own under the system temp dir
    (pytest's tmp_path is not reachable by the postgres user)."""

    def __init__(self) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="cthm-pg-"))
        self.cluster = PostgresCluster(self.base_dir)
        try:
            self.cluster.start()
        except BaseException:
            self.close()
            raise

    def create_database(self, name: str, *, empty: bool = False) -> str:
        return self.cluster.create_database(name, empty=empty)

    def drop_database(self, name: str) -> None:
        self.cluster.drop_database(name)

    def close(self) -> None:
        try:
            self.cluster.stop()  # by its pid, killed if it does not stop in time
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)


class ExternalServer:
    """The server CTHM_TEST_DATABASE_URL names; this worker's template and databases carry a
    random tag, so parallel workers and runs sharing the server never meet."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._url = parsed
        self._tag = secrets.token_hex(4)
        self._template = f"cthm_template_{self._tag}"
        self._admin = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._template_ready = False

    def url(self, database: str) -> str:
        parsed = self._url.set(drivername="postgresql+psycopg", database=database)
        return parsed.render_as_string(hide_password=False)

    def create_database(self, name: str, *, empty: bool = False) -> str:
        name = f"{name}_{self._tag}"
        if not empty and not self._template_ready:
            self._execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self._template)))
            store = Store(self.url(self._template))
            try:
                store.migrate()
            finally:
                store.close()
            self._template_ready = True
        source = "template0" if empty else self._template
        self._execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(source)
            )
        )
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """`name` as created (with its tag: the database of a URL create_database returned)."""
        self._execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def close(self) -> None:
        if self._template_ready:
            self._execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(self._template)
                )
            )

    def _execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(self._admin, autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)


def start_server() -> PostgresServer:
    """CTHM_TEST_DATABASE_URL's server if set, else a cluster of this worker's own."""
    external = os.environ.get(EXTERNAL_URL_ENV)
    if external:
        return ExternalServer(external)
    require_cluster()
    return OwnCluster()


def require_cluster() -> None:
    """Skips the test when this machine cannot run a throwaway PostgreSQL (fails it in CI,
    where it must)."""
    reason = _cannot_run_a_cluster()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
        pytest.skip(reason)


def _cannot_run_a_cluster() -> str | None:
    from cthm.testing.postgres import newest_binaries

    if os.geteuid() != 0:
        return "a throwaway PostgreSQL needs root (or set CTHM_TEST_DATABASE_URL)"
    if newest_binaries() is None:
        return "needs PostgreSQL (Debian: postgresql; `make system-packages`)"
    return None


class TestDatabases:
    """Makes the databases of one test: SQLite files in its tmp_path, PostgreSQL databases in
    the worker's server (started on first use), dropped when the test ends."""

    __test__ = False  # not a test class, whatever its name says
    _counter = itertools.count(1)

    def __init__(self, tmp_path: Path, server: Callable[[], PostgresServer]) -> None:
        self._tmp_path = tmp_path
        self._server = server
        self._made: list[str] = []
        self._files = itertools.count()

    def new(self, kind: str, *, empty: bool = False) -> str:
        """A URL of a new database of `kind`. PostgreSQL's is migrated to head already unless
        `empty` (Store.migrate() then has nothing to do); SQLite's file does not exist yet."""
        if kind == "sqlite":
            # Not created: the store's first migrate() does that (as in production). The first
            # is tests/store's `db_path`.
            number = next(self._files)
            name = "cthm.db" if number == 0 else f"cthm-{number}.db"
            return f"sqlite:///{self._tmp_path / name}"
        if kind != "postgresql":
            raise ValueError(f"unknown database kind {kind!r}")
        name = f"test_{os.getpid()}_{next(self._counter)}"
        url = self._server().create_database(name, empty=empty)
        self._made.append(url)
        return url

    def drop_all(self) -> None:
        for url in self._made:
            database = make_url(url).database
            assert database is not None
            self._server().drop_database(database)
        self._made.clear()


_PLACEHOLDER = re.compile(r"\?")


class PlainSql:
    """Statements run on a test's database by hand, not through the code under test: sqlite3
    on the file, psycopg on PostgreSQL. Placeholders are `?` on both."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kind = kind_of(url)

    def __call__(self, statement: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of `statement` (none for a statement that returns none), committed."""
        if self.kind == "sqlite":
            path = make_url(self.url).database
            assert path
            file = sqlite3.connect(path)
            try:
                rows = file.execute(statement, params).fetchall()
                file.commit()
                return rows
            finally:
                file.close()
        plain = make_url(self.url).set(drivername="postgresql")
        with psycopg.connect(
            plain.render_as_string(hide_password=False), connect_timeout=5
        ) as connection:
            cursor = connection.execute(_PLACEHOLDER.sub("%s", statement), params)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def tables(self) -> set[str]:
        if self.kind == "sqlite":
            return {n for (n,) in self("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {n for (n,) in self("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}

    def columns(self, table: str) -> list[str]:
        if self.kind == "sqlite":
            return [str(row[1]) for row in self(f"PRAGMA table_info({table})")]
        rows = self(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
            table,
        )
        return [str(name) for (name,) in rows]
