"""The write path's statements run on SQLite's driver directly (store/prepared.py): what they
store, return and raise is what SQLAlchemy's own execution stores, returns and raises.

Each comparison runs the same statement both ways: directly, and through SQLAlchemy (forced
by a cursor listener on the engine, as a test counting statements has). On PostgreSQL both ways
are SQLAlchemy's: the tests hold there too.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Table, insert
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from cthm.domain import ListQuery, Role, new_binding
from cthm.store import Store
from cthm.store.audit import _INSERT_AUDIT
from cthm.store.engine import WRITE_OPTION
from cthm.store.prepared import Prepared
from cthm.store.repository import _INSERT_BINDING
from cthm.store.tables import RouterRow
from cthm.store.tokens import _LOOKUP_WITH_ROUTER, hash_secret
from support.databases import PlainSql
from support.store import CATALOG, MakeRouter

THROUGH = ["driver", "sqlalchemy"]


@contextmanager
def through(store: Store, way: str) -> Iterator[list[str]]:
    """Statements run as `way` says meanwhile; with "sqlalchemy", the ones SQLAlchemy ran."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    if way == "driver":
        yield seen
        return
    sa_event.listen(store._engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa_event.remove(store._engine, "before_cursor_execute", record)


def _json(value: Any) -> dict[str, Any]:
    """A JSON column as read by hand: text on SQLite, already decoded on PostgreSQL."""
    decoded = json.loads(value) if isinstance(value, str) else value
    assert isinstance(decoded, dict)
    return decoded


def _shape(value: object) -> str:
    """A stored value with its digits blanked: how it is written, not what it says."""
    return re.sub(r"\d", "0", str(value))


def test_a_create_stores_what_sqlalchemy_stores(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql
) -> None:
    router = make_router()
    ids = []
    for port, way in ((2000, "driver"), (2001, "sqlalchemy")):
        with through(store, way), store.unit_of_work() as repo:
            read = repo.get_router(router.id)
            wanted = new_binding(CATALOG, read, protocol="tcp", port=port, helper="ftp")
            ids.append(repo.add_binding(wanted, router=read, last_change=True).id)
    rows = plain_sql(
        "SELECT id, router_id, project_id, protocol, helper, direction, status,"
        " status_reason, revision_number, created_at, updated_at"
        " FROM conntrack_helpers ORDER BY port"
    )
    assert len(rows) == 2
    assert [row[0] for row in rows] == ids
    fast, slow = ([_shape(v) if i >= 8 else v for i, v in enumerate(row[1:])] for row in rows)
    assert fast == slow
    assert plain_sql("SELECT revision_number FROM routers") == [(router.revision_number + 2,)]
    events = plain_sql(
        "SELECT time, request_id, token_id, action, target_project_id, outcome, status_code,"
        " before, after, detail FROM audit_events"
        " WHERE action = 'create_router_conntrack_helper' ORDER BY time"
    )
    assert len(events) == 2
    (fast_time, *fast_rest), (slow_time, *slow_rest) = events
    assert _shape(fast_time) == _shape(slow_time)
    assert fast_rest[:-2] == slow_rest[:-2]
    fast_after, slow_after = (_json(rest[-2]) for rest in (fast_rest, slow_rest))
    assert (fast_after.pop("id"), fast_after.pop("port")) == (ids[0], 2000)
    assert (slow_after.pop("id"), slow_after.pop("port")) == (ids[1], 2001)
    assert fast_after == slow_after


@pytest.mark.parametrize("way", THROUGH)
def test_a_token_and_its_router_read_as_sqlalchemy_reads_them(
    store: Store, make_router: MakeRouter, way: str
) -> None:
    router = make_router(project_id="p")
    expires = datetime.now(UTC) + timedelta(days=1)
    with store.unit_of_work() as repo:
        _, secret = repo.tokens.create(project_id="p", roles=[Role.MEMBER], expires_at=expires)
    params = {"b_hash": hash_secret(secret), "b_router": router.id}
    with store._engine.connect() as connection, through(store, way):
        read = _LOOKUP_WITH_ROUTER.one_or_none(connection, params)
        expected = connection.execute(_LOOKUP_WITH_ROUTER.statement, params).one()
        gone = _LOOKUP_WITH_ROUTER.one_or_none(connection, {**params, "b_hash": "0" * 64})
    assert read._asdict() == expected._asdict()
    assert read.expires_at == expires  # timezone-aware UTC, as the column's type returns it
    assert read.r_created_at == router.created_at
    assert gone is None


@pytest.mark.parametrize("way", THROUGH)
def test_a_refused_insert_raises_as_sqlalchemy_does(
    store: Store, make_router: MakeRouter, way: str
) -> None:
    router = make_router()
    with store.unit_of_work() as repo:
        repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))
    taken = new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp")
    now = datetime.now(UTC)
    values = {
        "id": taken.id,
        "router_id": router.id,
        "project_id": router.project_id,
        "protocol": "tcp",
        "port": 21,
        "helper": "ftp",
        "direction": "ingress",
        "status": "PENDING",
        "status_reason": "",
        "revision_number": 1,
        "created_at": now,
        "updated_at": now,
    }
    with (
        store._engine.begin() as connection,
        through(store, way),
        pytest.raises(IntegrityError),
    ):
        _INSERT_BINDING.run(connection, values)
    naive = {**values, "port": 22, "created_at": now.replace(tzinfo=None)}
    with (
        store._engine.begin() as connection,
        through(store, way),
        pytest.raises(StatementError, match="naive datetime"),
    ):
        _INSERT_BINDING.run(connection, naive)


def test_a_statement_needing_a_default_computed_in_python_is_run_by_sqlalchemy(
    store: Store, plain_sql: PlainSql
) -> None:
    """RouterRow.name has a Python-side default: left out, it is still written."""
    routers = cast(Table, RouterRow.__table__)
    now = datetime.now(UTC)
    values = {
        "id": "00000000-0000-4000-8000-000000000001",
        "project_id": "p",
        "namespace": "qrouter-prepared",
        "status": "PENDING",
        "revision_number": 1,
        "created_at": now,
        "updated_at": now,
    }
    with store._engine.begin() as connection:
        Prepared(insert(routers)).run(connection, values)
    assert plain_sql("SELECT name, status_reason FROM routers") == [("", "")]


def test_cursor_listeners_see_every_statement_of_a_create(
    store: Store, make_router: MakeRouter
) -> None:
    router = make_router()
    with through(store, "sqlalchemy") as seen:
        with store.unit_of_work() as repo:
            read = repo.get_router(router.id)
            wanted = new_binding(CATALOG, read, protocol="tcp", port=2300, helper="ftp")
            repo.add_binding(wanted, router=read, last_change=True)
        with store.unit_of_work(write=False) as repo:
            assert repo.get_binding(router.id, wanted.id).port == 2300
    written = " ".join(seen)
    for table in ("conntrack_helpers", "audit_events", "change_log"):
        assert f"INSERT INTO {table}" in written
    if store.dialect == "sqlite":
        assert seen[0] == "BEGIN IMMEDIATE"
        assert "BEGIN" in seen


def test_a_write_refused_the_lock_raises_as_sqlalchemy_does(store: Store, db_path: Path) -> None:
    """BEGIN IMMEDIATE run on the driver: a database another writer holds fails the begin with
    SQLAlchemy's OperationalError (the store's Unavailable: 'the database is busy')."""
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with store._engine.connect() as connection:
            driver: Any = connection.connection.driver_connection
            driver.execute("PRAGMA busy_timeout=0")
            try:
                connection.execution_options(**{WRITE_OPTION: True})
                with pytest.raises(OperationalError, match="locked"):
                    connection.begin()
            finally:
                driver.execute("PRAGMA busy_timeout=30000")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with store.unit_of_work() as repo:  # and the store writes again once it is free
        repo.audit.record(
            action="a",
            target_type="t",
            target_id=None,
            target_project_id=None,
            before=None,
            after={"x": 1},
            status_code=200,
        )


def test_an_audit_row_holds_what_was_given(store: Store, plain_sql: PlainSql) -> None:
    given = {"nested": {"list": [1, "two", None]}, "text": "é"}
    with store._engine.begin() as connection:
        _INSERT_AUDIT.run(
            connection,
            {
                "id": "00000000-0000-4000-8000-0000000000aa",
                "time": datetime(2026, 12, 5, 12, 0, tzinfo=UTC),
                "request_id": "req",
                "token_id": None,
                "project_id": None,
                "action": "act",
                "target_type": "t",
                "target_id": None,
                "target_project_id": None,
                "outcome": "success",
                "status_code": 200,
                "before": None,
                "after": given,
                "detail": "",
            },
        )
    with store.unit_of_work(write=False) as repo:
        (event,) = [e for e in repo.audit.list(ListQuery()) if e["action"] == "act"]
    assert event["after"] == given
    assert event["before"] is None
    assert event["time"] == "2026-12-05T12:00:00Z"
    assert plain_sql("SELECT count(*) FROM audit_events WHERE request_id = 'req'") == [(1,)]


def test_a_create_on_sqlite_runs_its_statements_on_the_driver(
    store: Store, make_router: MakeRouter, db_path: Path
) -> None:
    """A write's token read, the router's bump, the binding's and its audit event's INSERTs and
    the change log's row all leave SQLAlchemy's execute path out (none falls back unnoticed,
    say after a column gains a default computed in Python)."""
    router = make_router(project_id="p")
    with store.unit_of_work() as repo:
        _, secret = repo.tokens.create(project_id="p", roles=[Role.MEMBER])
    through_sqlalchemy: list[str] = []

    def record(_connection: Any, statement: Any, *_args: Any) -> None:
        through_sqlalchemy.append(str(statement))

    sa_event.listen(store._engine, "before_execute", record)
    try:
        with store.unit_of_work() as repo:
            assert repo.lookup_token(secret, router_id=router.id) is not None
            read = repo.get_router(router.id)
            wanted = new_binding(CATALOG, read, protocol="tcp", port=2400, helper="ftp")
            repo.add_binding(wanted, router=read, last_change=True)
    finally:
        sa_event.remove(store._engine, "before_execute", record)
    assert through_sqlalchemy == []
    with store.unit_of_work(write=False) as repo:
        assert repo.get_binding(router.id, wanted.id).port == 2400


@pytest.mark.parametrize("way", THROUGH)
def test_a_statement_on_a_connection_without_a_transaction_begins_one(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql, way: str
) -> None:
    """As SQLAlchemy's execute does (autobegin): what it writes is undone by a rollback."""
    router = make_router()
    routers = cast(Table, RouterRow.__table__)
    bump = Prepared(
        routers.update()
        .where(routers.c.id == router.id)
        .values(revision_number=routers.c.revision_number + 1)
    )
    with store._engine.connect() as connection, through(store, way):
        assert not connection.in_transaction()
        bump.run(connection, {})
        assert connection.in_transaction()
        connection.rollback()
    assert plain_sql("SELECT revision_number FROM routers") == [(router.revision_number,)]
