"""The API's write path in the store (issues 13 and 14): a create given the router its unit of
work read, the change log written and NOTIFYed in one statement on PostgreSQL, and pooled
PostgreSQL connections pinged only after resting.

On SQLite and PostgreSQL unless marked; rows are read back by hand (plain_sql).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from cthm.domain import Unavailable, new_binding, new_router
from cthm.store import Store, engine
from cthm.store.hosts import CHANGE_CHANNEL
from cthm.store.listener import conninfo
from support.databases import PlainSql
from support.store import CATALOG, MakeRouter

postgres_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def test_a_create_given_its_router_bumps_the_routers_revision_once(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql
) -> None:
    router = make_router()
    for port in (2000, 2001):
        with store.unit_of_work() as repo:
            read = repo.get_router(router.id)
            wanted = new_binding(CATALOG, read, protocol="tcp", port=port, helper="ftp")
            created = repo.add_binding(wanted, router=read)
        assert created.project_id == router.project_id
    assert plain_sql("SELECT revision_number FROM routers") == [(router.revision_number + 2,)]
    assert sorted(plain_sql("SELECT port FROM conntrack_helpers")) == [(2000,), (2001,)]
    kinds = plain_sql("SELECT router_id FROM change_log ORDER BY revision")
    assert kinds[-2:] == [(router.id,), (router.id,)]


def test_a_router_given_for_another_binding_is_not_used(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql
) -> None:
    first, second = make_router(name="a"), make_router(name="b", project_id="q")
    with store.unit_of_work() as repo:
        wanted = new_binding(CATALOG, second, protocol="tcp", port=2100, helper="ftp")
        created = repo.add_binding(wanted, router=repo.get_router(first.id))
    assert created.project_id == "q"
    revisions = dict(plain_sql("SELECT id, revision_number FROM routers"))
    assert revisions == {first.id: first.revision_number, second.id: second.revision_number + 1}


@postgres_only
def test_a_create_given_its_router_is_two_statements_on_postgresql(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql
) -> None:
    """After the router's read: the router's bump, the binding and its audit event in one
    statement, the change log's lock, row and NOTIFY in another (was 7: a SELECT of the port,
    the router locked, the binding, the bump, the event, the lock, the change log)."""
    router = make_router()
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    try:
        with store.unit_of_work() as repo:
            read = repo.get_router(router.id)
            event.listen(store._engine, "before_cursor_execute", record)  # the commit's too
            wanted = new_binding(CATALOG, read, protocol="tcp", port=2200, helper="ftp")
            created = repo.add_binding(wanted, router=read)
    finally:
        if event.contains(store._engine, "before_cursor_execute", record):
            event.remove(store._engine, "before_cursor_execute", record)
    assert len(statements) == 2, statements
    assert "INSERT INTO conntrack_helpers" in statements[0]
    assert "INSERT INTO audit_events" in statements[0]
    assert "INSERT INTO change_log" in statements[1]
    rows = plain_sql(
        "SELECT action, status_code, target_project_id, after FROM audit_events"
        f" WHERE target_id = '{created.id}'"
    )
    assert len(rows) == 1
    action, status_code, project_id, after = rows[0]
    assert (action, status_code, project_id) == (
        "create_router_conntrack_helper",
        201,
        router.project_id,
    )
    after = after if isinstance(after, dict) else json.loads(after)
    assert (after["id"], after["project_id"], after["port"]) == (
        created.id,
        router.project_id,
        2200,
    )
    assert plain_sql("SELECT revision_number FROM routers") == [(router.revision_number + 1,)]


@postgres_only
def test_the_apis_create_is_one_statement_with_its_change_log_row_on_postgresql(
    database_url: str, plain_sql: PlainSql
) -> None:
    """The API's create (its router read with the token, last_change): the router's bump, the
    binding, its audit event and the change log's lock, row and NOTIFY in one statement; the
    row's revision is the one the unit reports and listeners hear at the commit."""
    store = Store(database_url)
    listener = psycopg.connect(conninfo(database_url), autocommit=True)
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    try:
        with store.unit_of_work() as repo:
            router = repo.add_router(new_router(name="a", project_id="p"))
        listener.execute(f"LISTEN {CHANGE_CHANNEL}")
        with store.unit_of_work() as repo:
            read = repo.get_router(router.id)
            event.listen(store._engine, "before_cursor_execute", record)
            wanted = new_binding(CATALOG, read, protocol="tcp", port=2300, helper="ftp")
            created = repo.add_binding(wanted, router=read, last_change=True)
        event.remove(store._engine, "before_cursor_execute", record)
        assert repo.change_revisions is not None
        first, last = repo.change_revisions
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=1)]
    finally:
        if event.contains(store._engine, "before_cursor_execute", record):
            event.remove(store._engine, "before_cursor_execute", record)
        listener.close()
        store.close()
    assert len(statements) == 1, statements
    for table in ("conntrack_helpers", "audit_events", "change_log"):
        assert f"INSERT INTO {table}" in statements[0]
    assert first == last
    assert payloads == [str(last)]
    assert plain_sql("SELECT revision, router_id, kind FROM change_log ORDER BY revision")[-1] == (
        last,
        router.id,
        "MODIFIED",
    )
    assert plain_sql(f"SELECT port FROM conntrack_helpers WHERE id = '{created.id}'") == [(2300,)]
    assert plain_sql(f"SELECT count(*) FROM audit_events WHERE target_id = '{created.id}'") == [
        (1,)
    ]


def test_a_change_after_the_units_last_change_is_refused_and_nothing_is_kept(
    store: Store, make_router: MakeRouter, plain_sql: PlainSql
) -> None:
    router = make_router()
    log_before = plain_sql("SELECT count(*) FROM change_log")

    def create_then_resync() -> None:
        with store.unit_of_work() as repo:
            read = repo.get_router(router.id)
            wanted = new_binding(CATALOG, read, protocol="tcp", port=2400, helper="ftp")
            repo.add_binding(wanted, router=read, last_change=True)
            repo.request_resync(router.id)

    with pytest.raises(RuntimeError, match="last_change"):
        create_then_resync()
    assert plain_sql("SELECT count(*) FROM conntrack_helpers") == [(0,)]
    assert plain_sql("SELECT count(*) FROM change_log") == log_before
    assert plain_sql("SELECT revision_number FROM routers") == [(router.revision_number,)]


@postgres_only
def test_a_change_to_several_routers_notifies_its_last_revision_once(database_url: str) -> None:
    store = Store(database_url)
    listener = psycopg.connect(conninfo(database_url), autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANGE_CHANNEL}")
        with store.unit_of_work() as repo:
            first = repo.add_router(new_router(name="a", project_id="p"))
            repo.add_router(new_router(name="b", project_id="p"))
        with store.unit_of_work() as repo:
            repo.delete_router(first.id)  # one router: the INSERT that NOTIFYs
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=2)]
        with store.unit_of_work(write=False) as repo:
            revisions = [c.revision for c in repo.hosts.changes_since(0, None, 10)]
        assert len(revisions) == 3
        assert payloads == [str(revisions[1]), str(revisions[2])]
    finally:
        listener.close()
        store.close()


@pytest.fixture
def pg_store(database_url: str) -> Iterator[Store]:
    store = Store(database_url)
    try:
        yield store
    finally:
        store.close()


def terminate_cthm_sessions(plain_sql: PlainSql) -> int:
    """Ends the store's pooled sessions on the server, as a restart or failover does."""
    rows = plain_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
        " current_database() AND pid <> pg_backend_pid() AND application_name = 'cthm'"
    )
    return len(rows)


@postgres_only
def test_a_rested_connection_the_server_dropped_is_replaced_before_use(
    pg_store: Store, plain_sql: PlainSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "PING_IDLE", 0.0)  # every pooled connection counts as rested
    with pg_store.unit_of_work() as repo:
        repo.add_router(new_router(name="before", project_id="p"))
    assert terminate_cthm_sessions(plain_sql) >= 1
    with pg_store.unit_of_work() as repo:  # pinged, found dead, replaced: no error
        repo.add_router(new_router(name="after", project_id="p"))
    assert sorted(plain_sql("SELECT name FROM routers")) == [("after",), ("before",)]


@postgres_only
def test_a_busy_connection_is_not_pinged_and_a_drop_fails_one_request(
    pg_store: Store, plain_sql: PlainSql, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The price of not pinging at every checkout: a connection the server dropped within
    PING_IDLE of its last use fails the one request that gets it (503), not the next."""
    monkeypatch.setattr(engine, "PING_IDLE", 3600.0)
    with pg_store.unit_of_work() as repo:
        repo.add_router(new_router(name="before", project_id="p"))
    assert terminate_cthm_sessions(plain_sql) >= 1
    with pytest.raises(Unavailable), pg_store.unit_of_work() as repo:
        repo.add_router(new_router(name="lost", project_id="p"))
    with pg_store.unit_of_work() as repo:  # the pool replaced the dropped connections
        repo.add_router(new_router(name="after", project_id="p"))
    assert sorted(plain_sql("SELECT name FROM routers")) == [("after",), ("before",)]
