"""cthm.testing.PostgresCluster: a real PostgreSQL in a temporary directory, as the `postgres`
user, on a free port; databases copied from a migrated template; stopped and killed by its own
pid, touching nothing outside its directory."""

from __future__ import annotations

import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cthm.domain import ListQuery
from cthm.store import Store
from cthm.testing import PostgresCluster, PostgresClusterError
from cthm.testing.postgres import DEFAULT_PORT
from support.databases import require_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    require_cluster()
    base = Path(tempfile.mkdtemp(prefix="cthm-pg-test-"))
    cluster = PostgresCluster(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _plain(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (without the +driver)."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _processes_of(data_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(data_dir).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_databases_come_from_the_migrated_template_and_are_separate(
    cluster: PostgresCluster,
) -> None:
    first = cluster.create_database("kit_first")
    second = cluster.create_database("kit_second")
    assert cluster.port not in (0, DEFAULT_PORT)
    assert f"@127.0.0.1:{cluster.port}/kit_first" in first

    with psycopg.connect(_plain(first)) as connection:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.execute("CREATE TABLE only_in_first (x int)")
    with psycopg.connect(_plain(second)) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() == revision
        tables = connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert ("routers",) in tables
    assert ("only_in_first",) not in tables
    assert {"kit_first", "kit_second"} <= set(cluster.databases())

    # The store opens it as it is: already at the newest revision.
    store = Store(second)
    try:
        store.migrate()
        with store.unit_of_work(write=False) as repo:
            assert repo.list_routers(ListQuery()) == []
    finally:
        store.close()


def test_an_empty_database_has_no_tables(cluster: PostgresCluster) -> None:
    url = cluster.create_database("kit_empty", empty=True)
    with psycopg.connect(_plain(url)) as connection:
        count = connection.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert count == (0,)


def test_the_role_needs_its_password_over_tcp(cluster: PostgresCluster) -> None:
    url = cluster.create_database("kit_password")
    wrong = _plain(url).replace(cluster.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5).close()


def test_a_dropped_database_is_gone_even_with_a_session_open(cluster: PostgresCluster) -> None:
    url = cluster.create_database("kit_dropped")
    connection = psycopg.connect(_plain(url))
    try:
        cluster.drop_database("kit_dropped")
    finally:
        connection.close()
    assert "kit_dropped" not in cluster.databases()


def test_names_that_are_not_plain_identifiers_are_refused(cluster: PostgresCluster) -> None:
    for name in ("Upper", "a-b", "x; DROP DATABASE postgres", "", "a" * 64):
        with pytest.raises(ValueError, match="not a database name"):
            cluster.create_database(name)


def test_restart_keeps_data_port_and_urls(cluster: PostgresCluster) -> None:
    url = cluster.create_database("kit_restart")
    with psycopg.connect(_plain(url)) as connection:
        connection.execute("CREATE TABLE kept (x int)")
        connection.execute("INSERT INTO kept VALUES (42)")
    port, old_pid = cluster.port, cluster.pid

    cluster.restart()

    assert cluster.port == port
    assert cluster.pid != old_pid
    with psycopg.connect(_plain(url)) as connection:
        assert connection.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_a_killed_cluster_recovers_what_it_acknowledged(cluster: PostgresCluster) -> None:
    url = cluster.create_database("kit_killed")
    with psycopg.connect(_plain(url)) as connection:
        connection.execute("CREATE TABLE kept (x int)")
        connection.execute("INSERT INTO kept VALUES (7)")
    pid = cluster.pid

    cluster.kill()

    assert not cluster.running
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists() or pid not in _processes_of(cluster.data_dir)
    cluster.start()
    with psycopg.connect(_plain(url)) as connection:
        assert connection.execute("SELECT x FROM kept").fetchall() == [(7,)]


def test_stop_leaves_no_process_and_nothing_outside_its_directory() -> None:
    require_cluster()
    base = Path(tempfile.mkdtemp(prefix="cthm-pg-test-"))
    cluster = PostgresCluster(base)
    try:
        cluster.start()
        cluster.create_database("kit_stop")
        port = cluster.port
        assert _processes_of(cluster.data_dir)
        # Its socket is in its directory, not in Debian's or libpq's default places.
        assert (cluster.socket_dir / f".s.PGSQL.{port}").is_socket()
        for default in (Path("/var/run/postgresql"), Path("/tmp")):
            assert not (default / f".s.PGSQL.{port}").exists()
        postgres_uid = pwd.getpwnam("postgres").pw_uid
        foreign = [p for p in base.rglob("*") if p.stat().st_uid != postgres_uid]
        assert not foreign, foreign

        cluster.stop()

        assert cluster.pid is None
        assert not cluster.running
        assert not _processes_of(cluster.data_dir)
        assert not (cluster.socket_dir / f".s.PGSQL.{port}").exists()
        with pytest.raises(PostgresClusterError, match="not running"):
            cluster.databases()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_directory_the_postgres_user_cannot_reach_is_refused_clearly(tmp_path: Path) -> None:
    require_cluster()
    # pytest's tmp_path is under a 0700 directory of root's.
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(PostgresClusterError, match="not reachable by the postgres user"):
        PostgresCluster(closed / "cluster").start()
