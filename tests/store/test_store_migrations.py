"""Alembic migrations on a real SQLite file: up from empty, down to base, up again, and the
migrated schema is exactly what the SQLAlchemy models declare."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text

from cthm.domain import new_router
from cthm.store import Store
from cthm.store.store import alembic_config
from cthm.store.tables import DIRECTION_CHECK, Base

TABLES = {
    "routers",
    "conntrack_helpers",
    "router_tombstones",
    "auth_tokens",
    "audit_events",
    "deployment",
    "change_log",
    "agents",
    "agent_namespaces",
    "router_hosts",
    "binding_hosts",
    "tombstone_hosts",
}


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migration history has several heads: {heads}"
    return heads[0]


def tables(db_path: Path) -> set[str]:
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def version(db_path: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text("SELECT * FROM alembic_version"))]
    finally:
        engine.dispose()


@pytest.fixture
def fresh(db_path: Path) -> Store:
    assert not db_path.exists()
    return Store(f"sqlite:///{db_path}")


def test_upgrade_downgrade_upgrade(fresh: Store, db_path: Path) -> None:
    try:
        fresh.migrate()
        assert tables(db_path) == TABLES | {"alembic_version"}
        assert version(db_path) == [head()]

        fresh.downgrade("base")
        assert tables(db_path) == {"alembic_version"}
        assert version(db_path) == []

        fresh.migrate()
        assert tables(db_path) == TABLES | {"alembic_version"}
        assert version(db_path) == [head()]
        # The re-created schema is usable, not just present.
        with fresh.unit_of_work() as repo:
            router = repo.add_router(new_router(name="after", project_id="p"))
        with fresh.unit_of_work(write=False) as repo:
            assert repo.get_router(router.id).name == "after"
    finally:
        fresh.close()


def test_migrate_is_idempotent(fresh: Store, db_path: Path) -> None:
    try:
        fresh.migrate()
        with fresh.unit_of_work() as repo:
            router = repo.add_router(new_router(name="kept", project_id="p"))
        fresh.migrate()
        fresh.migrate()
        assert version(db_path) == [head()]
        with fresh.unit_of_work(write=False) as repo:
            assert repo.get_router(router.id).name == "kept"
    finally:
        fresh.close()


@pytest.fixture
def migrated(fresh: Store, db_path: Path) -> Iterator[Engine]:
    """A plain engine on the database file once `fresh` has migrated it (and let it go)."""
    try:
        fresh.migrate()
    finally:
        fresh.close()
    engine = create_engine(f"sqlite:///{db_path}")
    try:
        yield engine
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(migrated: Engine) -> None:
    with migrated.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, Base.metadata) == []


def test_migrated_schema_holds_the_constraints(migrated: Engine) -> None:
    # compare_metadata is blind to some SQLite details; name the constraints that carry rules.
    inspector = inspect(migrated)
    assert {tuple(uq["column_names"]) for uq in inspector.get_unique_constraints("routers")} == {
        ("namespace",)
    }
    assert {
        tuple(uq["column_names"]) for uq in inspector.get_unique_constraints("conntrack_helpers")
    } == {("router_id", "protocol", "port", "direction")}
    checks = {
        ck["name"]: ck["sqltext"] for ck in inspector.get_check_constraints("conntrack_helpers")
    }
    assert checks == {"ck_conntrack_helpers_direction": DIRECTION_CHECK}
    (foreign_key,) = inspector.get_foreign_keys("conntrack_helpers")
    assert foreign_key["referred_table"] == "routers"
    assert foreign_key["constrained_columns"] == ["router_id"]
    assert foreign_key["options"].get("ondelete") == "CASCADE"
