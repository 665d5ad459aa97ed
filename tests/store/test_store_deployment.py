"""The deployment identity lives in the database: made by migration 0005, the same for every
process on that database, stable across restarts and migrations, made again if the row is gone,
and two databases never share one."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from cthm.store import Store, deployment_id


def migrated(path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    store.migrate()
    return store


def test_the_migration_makes_one_identity_that_every_store_on_the_database_reads(
    tmp_path: Path,
) -> None:
    first = migrated(tmp_path / "a.db")
    try:
        identity = deployment_id(first)
        assert str(uuid.UUID(identity)) == identity
        first.migrate()  # idempotent: the row is kept
        assert deployment_id(first) == identity
    finally:
        first.close()
    second = migrated(tmp_path / "a.db")  # another process (a replica, a restart)
    try:
        assert deployment_id(second) == identity
    finally:
        second.close()
    with sqlite3.connect(tmp_path / "a.db") as db:
        assert db.execute("SELECT singleton, deployment_id FROM deployment").fetchall() == [
            (1, identity)
        ]


def test_two_databases_are_two_deployments(tmp_path: Path) -> None:
    a, b = migrated(tmp_path / "a.db"), migrated(tmp_path / "b.db")
    try:
        assert deployment_id(a) != deployment_id(b)
    finally:
        a.close()
        b.close()


def test_a_missing_row_is_made_once_and_a_second_row_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    store = migrated(path)
    try:
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM deployment")
        made = deployment_id(store)
        assert deployment_id(store) == made
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM deployment").fetchone() == (1,)
            for singleton in (1, 2):
                try:
                    db.execute(
                        "INSERT INTO deployment VALUES (?, 'x', '2026-01-01 00:00:00')",
                        (singleton,),
                    )
                except sqlite3.IntegrityError:
                    continue
                raise AssertionError(f"a second deployment row ({singleton}) was accepted")
    finally:
        store.close()


def test_downgrade_below_0005_drops_the_identity_and_upgrade_makes_a_new_one(
    tmp_path: Path,
) -> None:
    store = migrated(tmp_path / "a.db")
    try:
        old = deployment_id(store)
        store.downgrade("0004")
        store.migrate()
        assert deployment_id(store) != old
    finally:
        store.close()
