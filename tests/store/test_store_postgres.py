"""The store on PostgreSQL: migrations (empty, concurrent, from an older cthm), race-free
If-Match and read-modify-write across two stores ("replicas"), change-log revisions committed
in revision order, NOTIFY, credentials kept out of logs and errors, and `cthm db`.

Every test runs against a real PostgreSQL (the suite's throwaway cluster); the ones that hold
for SQLite too run on both.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from cthm.api.routes._shared import check_revision
from cthm.domain import (
    Conflict,
    ListQuery,
    PreconditionFailed,
    Role,
    Unavailable,
    new_binding,
    new_router,
)
from cthm.store import Store
from cthm.store.hosts import CHANGE_CHANNEL, CHANGE_LOG_LOCK_KEY
from cthm.store.listener import conninfo
from cthm.store.store import migration_head
from cthm.store.tokens import hash_secret
from cthm.testing.service import CTHM, clean_env
from support.databases import TestDatabases, kind_of
from support.store import CATALOG

THREADS = 8
# Ids of the rows an older cthm wrote (the ones in its SQL below).
R_1 = "11111111-1111-4111-8111-111111111111"
R_GONE = "22222222-2222-4222-8222-222222222222"
B_IN = "33333333-3333-4333-8333-333333333333"
B_OUT = "44444444-4444-4444-8444-444444444444"
T_1 = "55555555-5555-4555-8555-555555555555"
E_1 = "66666666-6666-4666-8666-666666666666"
D_1 = "77777777-7777-4777-8777-777777777777"
JOIN_TIMEOUT = 60.0
TABLES_0005 = {
    "routers",
    "conntrack_helpers",
    "router_tombstones",
    "auth_tokens",
    "audit_events",
    "deployment",
}

# --- databases ---------------------------------------------------------------------------

NewDatabase = Callable[[], str]
# A test about PostgreSQL itself: `database_url` (tests/conftest.py) on PostgreSQL only.
postgres_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def empty_database(database_url: str, test_databases: TestDatabases) -> NewDatabase:
    """Makes a database of `database_url`'s kind with no tables at all (never migrated)."""
    return lambda: test_databases.new(kind_of(database_url), empty=True)


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[Store, Store]]:
    """Two stores on one database, as two API replicas have (PostgreSQL: see postgres_only)."""
    first, second = Store(database_url), Store(database_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def plain_engine(url: str) -> Engine:
    """An engine that is not the store's: reads what the database holds, not what the code
    under test says it holds."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed)


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException | None]:
    """Runs target(0..count-1) in threads started together; each one's exception or None."""
    outcomes: list[BaseException | None] = [None] * count
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(timeout=JOIN_TIMEOUT)
            target(index)
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "a thread is still running (a deadlock?)"
    return outcomes


# --- migrations ----------------------------------------------------------------------------


@postgres_only
def test_migrations_run_on_an_empty_postgresql_database(empty_database: NewDatabase) -> None:
    store = Store(empty_database())
    try:
        assert store.dialect == "postgresql"
        assert store.current_revision() is None
        store.migrate()
        assert store.current_revision() == migration_head()
        with store.unit_of_work() as repo:
            router = repo.add_router(new_router(name="r", project_id="p"))
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))
        with store.unit_of_work(write=False) as repo:
            assert [b.port for b in repo.bindings_of([router.id])[router.id]] == [21]
            assert repo.hosts.head_revision() >= 1
    finally:
        store.close()


@postgres_only
def test_migrated_postgresql_schema_matches_the_models(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from cthm.store.tables import Base

    engine = plain_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, Base.metadata) == []
            columns = {c["name"]: c for c in inspect(connection).get_columns("change_log")}
            # AUTOINCREMENT's counterpart: a sequence, which never hands out a value twice.
            assert "nextval" in str(columns["revision"]["default"])
    finally:
        engine.dispose()


@postgres_only
def test_concurrent_migrations_migrate_once(empty_database: NewDatabase) -> None:
    url = empty_database()
    stores = [Store(url) for _ in range(2)]
    try:
        outcomes = run_threads(2, lambda i: stores[i].migrate())
        assert outcomes == [None, None]
        assert stores[0].current_revision() == migration_head()
    finally:
        for store in stores:
            store.close()
    engine = plain_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
            # Migration 0005 inserts the deployment row: run twice it would have two (or fail).
            assert connection.execute(text("SELECT count(*) FROM deployment")).scalar() == 1
    finally:
        engine.dispose()


@postgres_only
def test_concurrent_migrations_from_two_processes(
    empty_database: NewDatabase, tmp_path: Path
) -> None:
    url = empty_database()
    url_file = tmp_path / "url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    env = clean_env(CTHM_DATABASE_URL_FILE=str(url_file))
    processes = [
        subprocess.Popen(
            [str(CTHM), "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [process.communicate(timeout=JOIN_TIMEOUT) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], results
    current = subprocess.run(
        [str(CTHM), "db", "current"], env=env, capture_output=True, text=True, timeout=60
    )
    assert current.stdout.strip() == migration_head()


def test_database_of_an_older_cthm_is_upgraded_without_loss(
    empty_database: NewDatabase,
) -> None:
    url = empty_database()
    store = Store(url)
    try:
        store.migrate("0005")
        engine = plain_engine(url)
        try:
            assert set(inspect(engine).get_table_names()) >= TABLES_0005
            secret = "cthm_" + "s" * 43
            _fill_0005(engine, secret)
            before = _snapshot(engine)
            store.migrate()
            assert store.current_revision() == migration_head()
            assert _snapshot(engine) == before  # every row as it was, column for column
        finally:
            engine.dispose()
        now = datetime.now(UTC)
        with store.unit_of_work(write=False) as repo:
            (router,) = repo.list_routers(ListQuery())
            assert (router.id, router.name, router.revision_number) == (R_1, "old", 3)
            bindings = repo.bindings_of([R_1])[R_1]
            assert [(b.port, b.direction.value) for b in bindings] == [
                (21, "ingress"),
                (21, "output"),
            ]
            token = repo.tokens.authenticate(secret, now)
            assert token is not None
            assert token.roles == frozenset({Role.ADMIN})
            assert token.host is None
            (event_,) = repo.audit.list(ListQuery())
            assert event_["after"] == {"name": "old", "nested": [1, 2]}
            assert repo.tombstones() == {R_GONE: "ns-gone"}
            assert repo.deployment_id() == D_1
        # The upgraded database works: a change reaches the (new) change feed.
        with store.unit_of_work() as repo:
            repo.update_router(R_1, name="new")
            repo.delete_binding(R_1, B_OUT)
        with store.unit_of_work(write=False) as repo:
            changes = repo.hosts.changes_since(0, None, 10)
            assert [c.router_id for c in changes] == [R_1]
    finally:
        store.close()


def _fill_0005(engine: Engine, secret: str) -> None:
    """Rows as cthm at schema 0005 wrote them (plain SQL: today's code writes today's schema)."""
    values = {
        "when": datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
        "router": R_1,
        "gone": R_GONE,
        "b_in": B_IN,
        "b_out": B_OUT,
        "token": T_1,
        "event": E_1,
        "deployment": D_1,
        "hash": hash_secret(secret),
        "after": '{"name": "old", "nested": [1, 2]}',
    }
    statements = [
        "DELETE FROM deployment",
        "INSERT INTO deployment (singleton, deployment_id, created_at) "
        "VALUES (1, :deployment, :when)",
        "INSERT INTO routers (id, name, project_id, namespace, status, status_reason, "
        "revision_number, created_at, updated_at) "
        "VALUES (:router, 'old', 'p', 'ns-1', 'ACTIVE', '', 3, :when, :when)",
        *(
            "INSERT INTO conntrack_helpers (id, router_id, project_id, protocol, port, helper, "
            "status, status_reason, revision_number, created_at, updated_at, direction) "
            f"VALUES (:{binding}, :router, 'p', 'tcp', 21, 'ftp', 'ACTIVE', '', 1, :when, "
            f":when, '{direction}')"
            for binding, direction in (("b_in", "ingress"), ("b_out", "output"))
        ),
        "INSERT INTO router_tombstones (router_id, namespace, deleted_at) "
        "VALUES (:gone, 'ns-gone', :when)",
        "INSERT INTO auth_tokens (id, project_id, roles, secret_hash, description, created_at, "
        "expires_at, revoked_at, created_by) "
        "VALUES (:token, 'admin', 'admin', :hash, 'first', :when, NULL, NULL, NULL)",
        "INSERT INTO audit_events (id, time, request_id, token_id, project_id, action, "
        "target_type, target_id, target_project_id, outcome, status_code, before, after, "
        "detail) VALUES (:event, :when, 'req-1', :token, 'admin', 'create_router', 'router', "
        ":router, 'p', 'success', 201, NULL, :after, '')",
    ]
    with engine.begin() as connection:
        for statement in statements:
            clause = text(statement)
            connection.execute(clause, {k: v for k, v in values.items() if f":{k}" in statement})


def _snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the 0005 tables, in the columns 0005 had (later columns left out)."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for table in sorted(TABLES_0005):
            rows = connection.execute(text(f"SELECT * FROM {table}")).mappings()
            result[table] = sorted(
                tuple(str(row[k]) for k in sorted(row.keys()) if k != "host") for row in rows
            )
    return result


# --- race-free writes across replicas ------------------------------------------------------


@postgres_only
def test_concurrent_if_match_updates_through_two_replicas_one_wins(
    replicas: tuple[Store, Store],
) -> None:
    with replicas[0].unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p"))
    expected = router.revision_number

    def put(index: int) -> None:
        # What PUT /routers/{id} with If-Match does: read locked, check, write.
        with replicas[index % 2].unit_of_work() as repo:
            found = repo.get_router(router.id, lock=True)
            time.sleep(0.05)  # every other writer is waiting now, or has read the same revision
            check_revision(expected, found.revision_number)
            repo.update_router(router.id, name=f"name-{index}")

    outcomes = run_threads(THREADS, put)
    winners = [i for i, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1, outcomes
    assert all(isinstance(o, PreconditionFailed) for o in outcomes if o is not None), outcomes
    with replicas[1].unit_of_work(write=False) as repo:
        stored = repo.get_router(router.id)
    assert stored.name == f"name-{winners[0]}"
    assert stored.revision_number == expected + 1


@postgres_only
def test_concurrent_if_match_binding_updates_one_wins(replicas: tuple[Store, Store]) -> None:
    with replicas[0].unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p"))
        binding = repo.add_binding(
            new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp")
        )

    def put(index: int) -> None:
        with replicas[index % 2].unit_of_work() as repo:
            repo.get_router(router.id, lock=True)
            found = repo.get_binding(router.id, binding.id, lock=True)
            time.sleep(0.05)
            check_revision(binding.revision_number, found.revision_number)
            repo.update_binding(router.id, binding.id, port=2100 + index)

    outcomes = run_threads(THREADS, put)
    assert sum(o is None for o in outcomes) == 1, outcomes
    assert all(isinstance(o, PreconditionFailed) for o in outcomes if o is not None), outcomes


@postgres_only
def test_concurrent_binding_writes_lose_no_router_revision(
    replicas: tuple[Store, Store],
) -> None:
    """Each binding change bumps its router's revision (read, then + 1): writers through two
    replicas at once must each count, or an agent would take a stale revision for current."""
    with replicas[0].unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p"))

    def add(index: int) -> None:
        with replicas[index % 2].unit_of_work() as repo:
            repo.add_binding(
                new_binding(CATALOG, router, protocol="udp", port=6000 + index, helper="tftp")
            )

    assert run_threads(THREADS, add) == [None] * THREADS
    with replicas[0].unit_of_work(write=False) as repo:
        assert repo.get_router(router.id).revision_number == router.revision_number + THREADS
        assert len(repo.bindings_of([router.id])[router.id]) == THREADS


@postgres_only
def test_uniqueness_races_between_replicas_are_conflicts(replicas: tuple[Store, Store]) -> None:
    with replicas[0].unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p"))

    def add(index: int) -> None:
        with replicas[index % 2].unit_of_work() as repo:
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))

    outcomes = run_threads(THREADS, add)
    assert sum(o is None for o in outcomes) == 1, outcomes
    assert all(isinstance(o, Conflict) for o in outcomes if o is not None), outcomes


@postgres_only
def test_concurrent_revocations_keep_the_first_time(replicas: tuple[Store, Store]) -> None:
    with replicas[0].unit_of_work() as repo:
        token, _ = repo.tokens.create(project_id="p", roles=[Role.MEMBER])
    times = [datetime(2026, 12, 1, 0, 0, i, tzinfo=UTC) for i in range(THREADS)]
    answers: list[datetime | None] = [None] * THREADS

    def revoke(index: int) -> None:
        with replicas[index % 2].unit_of_work() as repo:
            answers[index] = repo.tokens.revoke(token.id, times[index]).revoked_at

    def linger(_connection: Any) -> None:
        time.sleep(0.1)  # before each commit: the others read "not revoked" meanwhile

    for store in replicas:
        event.listen(store._engine, "commit", linger)
    try:
        assert run_threads(THREADS, revoke) == [None] * THREADS
    finally:
        for store in replicas:
            event.remove(store._engine, "commit", linger)
    with replicas[1].unit_of_work(write=False) as repo:
        stored = repo.tokens.get(token.id).revoked_at
    assert stored in times
    assert answers == [stored] * THREADS  # each caller was told the one time that holds


@postgres_only
def test_a_deadlock_is_a_conflict_to_retry(replicas: tuple[Store, Store]) -> None:
    """Two writers locking two routers in opposite orders: PostgreSQL undoes one of them. That
    one is told to retry (Conflict, 409), not that the database is unavailable (503)."""
    with replicas[0].unit_of_work() as repo:
        routers = [repo.add_router(new_router(name=f"r{i}", project_id="p")) for i in (0, 1)]
    both_locked_one = threading.Barrier(2)

    def cross(index: int) -> None:
        first, second = routers[index], routers[1 - index]
        with replicas[index].unit_of_work() as repo:
            repo.get_router(first.id, lock=True)
            both_locked_one.wait(timeout=JOIN_TIMEOUT)
            repo.get_router(second.id, lock=True)
            repo.update_router(second.id, name=f"by-{index}")

    outcomes = run_threads(2, cross)
    assert sum(o is None for o in outcomes) == 1, outcomes
    (lost,) = [o for o in outcomes if o is not None]
    assert isinstance(lost, Conflict), lost


# --- the change log ------------------------------------------------------------------------


@postgres_only
def test_change_log_revisions_become_visible_in_order(replicas: tuple[Store, Store]) -> None:
    """A watcher reads `revision > since` and moves `since` to the newest it saw: a revision
    committed after a bigger one would be skipped for good. Writers through two replicas
    dawdle at random between their change-log insert and their commit, as a busy server does."""
    per_writer = 6
    for store in replicas:
        event.listen(store._engine, "commit", _dawdle)
    stop = threading.Event()
    seen: list[int] = []
    reader_errors: list[BaseException] = []

    def read() -> None:
        since = 0
        try:
            while not stop.is_set():
                with replicas[0].unit_of_work(write=False) as repo:
                    changes = repo.hosts.changes_since(since, None, 1000)
                if changes:
                    seen.extend(c.revision for c in changes)
                    since = changes[-1].revision
            with replicas[0].unit_of_work(write=False) as repo:
                seen.extend(c.revision for c in repo.hosts.changes_since(since, None, 1000))
        except BaseException as exc:
            reader_errors.append(exc)

    def write(index: int) -> None:
        for step in range(per_writer):
            with replicas[index % 2].unit_of_work() as repo:
                repo.add_router(new_router(name=f"w{index}-{step}", project_id="p"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        outcomes = run_threads(THREADS, write)
    finally:
        stop.set()
        reader.join(JOIN_TIMEOUT)
        for store in replicas:
            event.remove(store._engine, "commit", _dawdle)
    assert outcomes == [None] * THREADS
    assert not reader_errors
    with replicas[1].unit_of_work(write=False) as repo:
        stored = [c.revision for c in repo.hosts.changes_since(0, None, 1000)]
    assert len(stored) == THREADS * per_writer
    assert seen == stored  # every revision, once, in order: none skipped


def _dawdle(_connection: Any) -> None:
    time.sleep(random.uniform(0, 0.01))


@postgres_only
def test_a_write_takes_its_change_log_revision_only_once_it_holds_the_lock(
    database_url: str, store: Store
) -> None:
    """The change-log lock, the INSERT and its NOTIFY are one statement: the revision (the
    sequence's next value) must still be taken after the lock is granted, not while waiting,
    or a writer waiting behind the holder would commit a smaller revision after its bigger one."""
    with store.unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p"))
    holder = psycopg.connect(conninfo(database_url))
    outcome: list[BaseException | None] = []
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOG_LOCK_KEY,))

        def create() -> None:
            try:
                with store.unit_of_work() as repo:
                    repo.add_binding(
                        new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp")
                    )
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        writer = threading.Thread(target=create, daemon=True)
        writer.start()
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not _waits_for_an_advisory_lock(holder):  # the create queued behind the holder
            assert writer.is_alive(), outcome
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held = holder.execute(
            "INSERT INTO change_log (router_id, namespace, kind, time)"
            " VALUES (%s, %s, 'MODIFIED', now()) RETURNING revision",
            (router.id, router.namespace),
        ).fetchone()
        holder.commit()
        writer.join(JOIN_TIMEOUT)
    finally:
        holder.close()
    assert outcome == [None]
    with store.unit_of_work(write=False) as repo:
        revisions = [c.revision for c in repo.hosts.changes_since(0, None, 1000)]
    assert held is not None
    assert revisions[-2:] == [held[0], revisions[-1]]
    assert revisions[-1] > held[0]


def _waits_for_an_advisory_lock(connection: psycopg.Connection[Any]) -> bool:
    row = connection.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return bool(row and row[0])


@postgres_only
def test_notify_carries_the_new_revision(database_url: str) -> None:
    store = Store(database_url)
    listener = psycopg.connect(conninfo(database_url), autocommit=True)
    try:
        listener.execute(f"LISTEN {CHANGE_CHANNEL}")
        with store.unit_of_work() as repo:
            router = repo.add_router(new_router(name="r", project_id="p"))
        with store.unit_of_work() as repo:
            repo.update_router(router.id, name="renamed")  # a name only: no change-log entry
        with store.unit_of_work() as repo:
            repo.delete_router(router.id)
        payloads = [n.payload for n in listener.notifies(timeout=5.0, stop_after=2)]
        with store.unit_of_work(write=False) as repo:
            revisions = [str(c.revision) for c in repo.hosts.changes_since(0, None, 10)]
        assert payloads == revisions
        assert len(payloads) == 2
    finally:
        listener.close()
        store.close()


# --- credentials ---------------------------------------------------------------------------


@postgres_only
def test_password_is_never_logged_nor_in_errors(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = make_url(database_url).password
    assert password
    caplog.set_level(logging.DEBUG)  # everything, SQLAlchemy's and psycopg's too
    store = Store(database_url)
    try:
        store.migrate()
        with store.unit_of_work() as repo:
            repo.add_router(new_router(name="r", project_id="p"))
        store.check_health()
    finally:
        store.close()
    # The server is down (nothing listens on the port): the error says so, without secrets.
    with socket_closed_port() as port:
        down = make_url(database_url).set(port=port).render_as_string(hide_password=False)
        for make_error in (Store.check_health, Store.migrate, _read):
            dead = Store(down)
            try:
                with pytest.raises(Unavailable) as raised:
                    make_error(dead)
            finally:
                dead.close()
            assert "cannot be reached" in raised.value.message
            assert password not in raised.value.message
    # Wrong password: refused, and the attempt's password is not in the message either.
    wrong = make_url(database_url).set(password="not-the-password-0123")
    refused = Store(wrong.render_as_string(hide_password=False))
    try:
        with pytest.raises(Unavailable) as raised:
            refused.check_health()
    finally:
        refused.close()
    assert "refused the credentials" in raised.value.message
    assert "not-the-password-0123" not in raised.value.message
    assert caplog.records, "nothing logged: the check would prove nothing"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert password not in logged
    assert "not-the-password-0123" not in logged


def _read(store: Store) -> None:
    with store.unit_of_work(write=False) as repo:
        repo.list_router_ids()


class socket_closed_port:
    """A loopback port nothing listens on (bound, never listening, while in use)."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        port: int = self._socket.getsockname()[1]
        return port

    def __exit__(self, *_: object) -> None:
        self._socket.close()


@postgres_only
def test_the_urls_parameters_reach_the_server(database_url: str) -> None:
    """sslmode and friends come from the URL: require TLS of a server without it and the
    store refuses to talk to it in the clear; the connections name themselves `cthm`."""
    store = Store(database_url)
    try:
        with store.unit_of_work(write=False) as repo:
            name = repo._session.execute(text("SELECT current_setting('application_name')"))
            assert name.scalar() == "cthm"
    finally:
        store.close()
    tls = Store(f"{database_url}?sslmode=require")
    try:
        with pytest.raises(Unavailable) as raised:
            tls.check_health()
    finally:
        tls.close()
    assert "TLS" in raised.value.message


# --- cthm db -------------------------------------------------------------------------------


def cthm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTHM), *args], env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


def test_cthm_db_upgrade_and_current(empty_database: NewDatabase, tmp_path: Path) -> None:
    url = empty_database()
    password = make_url(url).password
    before = cthm("db", "current", CTHM_DATABASE_URL=url, CTHM_DATA_DIR=str(tmp_path))
    if url.startswith("sqlite"):
        # A tool beside a server never creates its SQLite file: no database yet, exit 1.
        assert before.returncode == 1, before
        assert "no database" in before.stderr
    else:
        assert (before.returncode, before.stdout.strip()) == (0, "none"), before
    upgraded = cthm("db", "upgrade", CTHM_DATABASE_URL=url, CTHM_DATA_DIR=str(tmp_path))
    assert upgraded.returncode == 0, upgraded
    assert f"schema at revision {migration_head()}" in upgraded.stdout
    after = cthm("--json", "db", "current", CTHM_DATABASE_URL=url, CTHM_DATA_DIR=str(tmp_path))
    assert after.returncode == 0, after
    assert '"revision": "' + migration_head() + '"' in after.stdout
    for result in (before, upgraded, after):
        assert not password or password not in result.stdout + result.stderr


def test_cthm_db_on_the_default_sqlite_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    upgraded = cthm("db", "upgrade", "--data-dir", str(data_dir))
    assert upgraded.returncode == 0, upgraded
    assert (data_dir / "cthm.db").is_file()
    current = cthm("db", "current", "--data-dir", str(data_dir))
    assert (current.returncode, current.stdout.strip()) == (0, migration_head())


@postgres_only
def test_cthm_db_says_when_postgresql_is_down(database_url: str) -> None:
    with socket_closed_port() as port:
        url = make_url(database_url).set(port=port).render_as_string(hide_password=False)
        result = cthm("db", "current", CTHM_DATABASE_URL=url)
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr
    assert str(make_url(database_url).password) not in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- the URL from a file -------------------------------------------------------------------


@postgres_only
def test_database_url_file_is_read(database_url: str, tmp_path: Path) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text(database_url + "\n")
    url_file.chmod(0o600)
    by_flag = cthm("db", "current", "--database-url-file", str(url_file))
    assert (by_flag.returncode, by_flag.stdout.strip()) == (0, migration_head()), by_flag
    by_env = cthm("db", "current", CTHM_DATABASE_URL_FILE=str(url_file))
    assert (by_env.returncode, by_env.stdout.strip()) == (0, migration_head()), by_env


@pytest.mark.parametrize("command", [("db", "current"), ("db", "upgrade"), ("serve",)])
def test_database_url_file_readable_by_others_is_refused(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql+psycopg://cthm:hunter2-secret@127.0.0.1:1/x\n")
    url_file.chmod(0o644)
    result = cthm(*command, "--database-url-file", str(url_file), CTHM_DATA_DIR=str(tmp_path))
    assert result.returncode == 2, result
    assert "mode 0644" in result.stderr
    assert "chmod 600" in result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert not (tmp_path / "cthm.db").exists()  # nothing was started


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file away: needs root")
def test_database_url_file_of_another_user_is_refused(tmp_path: Path) -> None:
    url_file = tmp_path / "database-url"
    url_file.write_text("postgresql+psycopg://cthm:pw@127.0.0.1:1/x\n")
    url_file.chmod(0o600)
    os.chown(url_file, 65534, 65534)  # nobody's
    result = cthm("db", "current", CTHM_DATABASE_URL_FILE=str(url_file))
    assert result.returncode == 2, result
    assert "owned by uid 65534" in result.stderr
