"""The Service that `cthm serve` runs, in process, on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest

from cthm.cli.errors import ServiceError
from cthm.cli.service import Service, redact_url
from cthm.domain import ListQuery, new_router
from cthm.settings import load_settings


def test_start_prepares_a_private_data_dir_and_a_migrated_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    service = Service(load_settings(data_dir=data_dir, sweep_orphans=False))
    with service:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        with service.store.unit_of_work() as repo:
            repo.add_router(new_router(name="r", project_id="p"))
        with service.store.unit_of_work(write=False) as repo:
            assert [r.name for r in repo.list_routers(ListQuery())] == ["r"]
        assert (data_dir / "cthm.db-wal").exists()
    # stop() closed every connection: SQLite removed its write-ahead log while we still run
    assert not (data_dir / "cthm.db-wal").exists()
    with pytest.raises(RuntimeError):
        _ = service.store
    service.stop()  # idempotent
    tables = sqlite3.connect(data_dir / "cthm.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    assert "alembic_version" in {row[0] for row in tables}


def test_the_first_start_records_the_admin_token_it_made_in_the_audit_trail(
    tmp_path: Path,
) -> None:
    settings = load_settings(data_dir=tmp_path, sweep_orphans=False, agent_enabled=False)
    with Service(settings, say=lambda _: None) as service:
        assert service.admin_token_file == tmp_path / "admin.token"
        with service.store.unit_of_work(write=False) as repo:
            (token,) = repo.tokens.list(ListQuery())
    connection = sqlite3.connect(tmp_path / "cthm.db")
    try:
        rows = connection.execute(
            "SELECT action, target_type, target_id, target_project_id, outcome, status_code,"
            " token_id, after, detail FROM audit_events"
        ).fetchall()
    finally:
        connection.close()
    (row,) = rows
    assert row[:7] == ("create_auth_token", "auth_token", token.id, "admin", "success", 201, None)
    assert json.loads(row[7]) == {"id": token.id, "project_id": "admin", "roles": ["admin"]}
    assert row[8] == "bootstrap: no token existed"


def test_an_existing_data_dir_is_left_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    with Service(load_settings(data_dir=tmp_path, sweep_orphans=False)):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_a_database_that_cannot_be_opened_is_a_service_error(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/missing-dir/cthm.db"
    )
    with pytest.raises(ServiceError, match="cannot open database"):
        Service(settings).start()


def test_passwords_in_database_urls_are_not_shown() -> None:
    shown = redact_url("postgresql://cthm:s3cret@db.example/cthm")
    assert "s3cret" not in shown
    assert "db.example" in shown
