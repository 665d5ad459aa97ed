"""Engine construction: per-dialect connection settings in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from cthm.store.sqlite_file import SqliteFile

# Execution option that marks a connection as about to write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "cthm_write"


def make_engine(url: str, sqlite_file: SqliteFile | None = None) -> Engine:
    """sqlite_file: the file an SQLite URL names; its connections are made only through it
    (never creating the file, never opening another file found at its path)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    _configure_sqlite(engine, sqlite_file)
    return engine


def _configure_sqlite(engine: Engine, sqlite_file: SqliteFile | None) -> None:
    if sqlite_file is not None:

        @event.listens_for(engine, "do_connect")
        def _do_connect(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> Any:
            return sqlite_file.connect(**params)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred and
        # late, which turns concurrent read-then-write into "database is locked").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            if engine.url.database not in (None, "", ":memory:"):
                cursor.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit acknowledged to a client survives a crash (WAL + NORMAL may not).
                cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front, so two writers queue instead of deadlocking.
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
