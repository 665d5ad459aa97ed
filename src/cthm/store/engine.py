"""Engine construction: per-dialect connection settings in one place."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from cthm.store.sqlite_file import SqliteFile

# Execution option that marks a connection as about to write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "cthm_write"
# PostgreSQL: connections per process (requests run in a thread pool of about 40), and seconds
# to wait for the server when connecting.
POOL_SIZE = 10
POOL_OVERFLOW = 10
CONNECT_TIMEOUT = 5


def make_engine(url: str, sqlite_file: SqliteFile | None = None) -> Engine:
    """sqlite_file: the file an SQLite URL names; its connections are made only through it
    (never creating the file, never opening another file found at its path)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _postgresql_engine(postgresql_url(url))
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    _configure_sqlite(engine, sqlite_file)
    return engine


def postgresql_url(url: str) -> URL:
    """A PostgreSQL URL with its driver: psycopg (3), the one cthm ships, when none is named
    (`postgresql://...`, whose SQLAlchemy default would be psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _postgresql_engine(url: URL) -> Engine:
    # pre_ping: a connection the server dropped (restart, failover) is replaced, not handed
    # to a request. READ COMMITTED (the default): writers lock what they check (see
    # repository), and change-log writers commit in revision order (see hosts).
    defaults: dict[str, Any] = {
        # An unreachable server fails a request in seconds (Unavailable), not minutes.
        "connect_timeout": CONNECT_TIMEOUT,
        # Names cthm's sessions in pg_stat_activity.
        "application_name": "cthm",
    }
    given = url.query  # the URL's own parameters (sslmode, ...) win
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        # A pool exhausted by a stuck database answers 503 after this long, not never.
        pool_timeout=30,
        connect_args={key: value for key, value in defaults.items() if key not in given},
    )


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
