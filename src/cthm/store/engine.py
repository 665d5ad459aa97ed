"""Engine construction: per-dialect connection settings in one place."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError

from cthm.store.sqlite_file import SqliteFile

# Execution option that marks a connection as about to write (SQLite: BEGIN IMMEDIATE).
WRITE_OPTION = "cthm_write"
# Execution option False: a write whose loss on power failure costs nothing (the agents' status
# reports, rewritten by every full resync), committed without its own fsync (Store.unit_of_work).
DURABLE_OPTION = "cthm_durable"
# PostgreSQL: connections per process (requests run in a thread pool of about 40), and seconds
# to wait for the server when connecting.
POOL_SIZE = 10
POOL_OVERFLOW = 10
CONNECT_TIMEOUT = 5
# PostgreSQL: seconds a pooled connection may rest before it is pinged again (_ping_when_idle).
PING_IDLE = 1.0
_RESTED_FROM = "cthm_rested_from"


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
    # READ COMMITTED (the default): writers lock what they check (see repository), and
    # change-log writers commit in revision order (see hosts).
    defaults: dict[str, Any] = {
        # An unreachable server fails a request in seconds (Unavailable), not minutes.
        "connect_timeout": CONNECT_TIMEOUT,
        # Names cthm's sessions in pg_stat_activity.
        "application_name": "cthm",
    }
    given = url.query  # the URL's own parameters (sslmode, ...) win
    engine = create_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_OVERFLOW,
        # A pool exhausted by a stuck database answers 503 after this long, not never.
        pool_timeout=30,
        connect_args={key: value for key, value in defaults.items() if key not in given},
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """A pooled connection that rested longer than PING_IDLE seconds is pinged before use and
    replaced if the server dropped it (a restart, a failover), not handed to a request.

    Instead of pool_pre_ping, which pings at every checkout: one more round trip per request
    (of ~12 on a create). A connection back in the pool within PING_IDLE was working then; if
    the server drops it in that moment, its request fails (Unavailable, 503) and the pool
    replaces every connection older than the failure (SQLAlchemy's disconnect handling)."""

    @event.listens_for(engine, "checkin")
    def _rested_from(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RESTED_FROM] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        rested_from = record.info.get(_RESTED_FROM)  # None: new, connected just now
        if rested_from is None or time.monotonic() - rested_from < PING_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards it and connects again (up to three tries).
            raise DisconnectionError("the database dropped a pooled connection") from exc


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

    on_disk = engine.url.database not in (None, "", ":memory:")

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front, so two writers queue instead of deadlocking.
        options = connection.get_execution_options()
        write = options.get(WRITE_OPTION, False)
        if write and on_disk:
            _synchronous(connection, "FULL" if options.get(DURABLE_OPTION, True) else "NORMAL")
        _begin(connection, "BEGIN IMMEDIATE" if write else "BEGIN")


def _begin(connection: Any, statement: str) -> None:
    """`statement` on the connection's driver, past SQLAlchemy's execute path (every unit of
    work begins: ~2% of a create's CPU), failing as that path would (DBAPIError's
    subclasses: a busy database is OperationalError). Through that path while anything listens
    to the engine's cursor events, so they see every statement."""
    dispatch = connection.engine.dispatch  # not the connection's: made anew per connection
    if dispatch.before_cursor_execute or dispatch.after_cursor_execute:
        connection.exec_driver_sql(statement)
        return
    dialect = connection.dialect
    try:
        connection.connection.driver_connection.execute(statement).close()
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            statement, (), exc, dialect.loaded_dbapi.Error, dialect=dialect
        ) from exc


def _synchronous(connection: Any, level: str) -> None:
    """The pooled connection's `PRAGMA synchronous` for the write beginning (SQLite refuses to
    change it inside a transaction), set only when it differs from the connection's last.
    NORMAL in WAL mode: the commit is atomic and survives a crash of the process, not a power
    loss. It never weakens a FULL commit: WAL frames are synced in order, so the fsync of any
    later FULL commit (an API write) syncs the NORMAL ones before it too."""
    info = connection.connection.info  # lives as long as the DBAPI connection
    if info.get("cthm_synchronous", "FULL") != level:
        connection.exec_driver_sql(f"PRAGMA synchronous={level}")
        info["cthm_synchronous"] = level
