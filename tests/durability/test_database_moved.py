"""Durability: the SQLite file moved away under a running server and moved back.

SQLite, asked to open a path where the file is gone, creates a new empty file there, and a
connection opening an empty file deletes the WAL beside it: committed writes still in that WAL
are gone. cthm must never create the file once initialised, never open what is at the path
when it is not the file it opened, answer 503 while it is away, touch none of its files
(main, -wal, -shm), and resume by itself when the original is back, losing nothing it
acknowledged. Real `cthm serve` processes, real files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cthm.domain import Unavailable, new_router
from cthm.store import Store
from cthm.testing.service import ServerProcess

WAY = "cthm.db.moved"


def fingerprint(path: Path) -> tuple[int, int, str]:
    """Inode, size and content hash: what "untouched" means for a file."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def assert_untouched(
    before: dict[Path, tuple[int, int, str]],
    after: dict[Path, tuple[int, int, str]],
    wal: Path,
    shm: Path,
) -> None:
    """Nothing deleted, replaced or checkpointed while the file was away. A transaction already
    running when the file moved may still end on its open descriptors (the WAL then only grows
    and the -shm index changes: that is the moved database's own state, kept with it), so those
    two are held to their identity, the WAL to its old bytes as a prefix."""
    for path in (wal, shm):
        assert after[path][0] == before[path][0], f"{path.name} replaced"
    assert after[shm][1] == before[shm][1], "-shm resized"
    assert after[wal][1] >= before[wal][1], "WAL shrank (checkpointed or truncated)"
    with wal.open("rb") as handle:
        kept = hashlib.sha256(handle.read(before[wal][1])).hexdigest()
    assert kept == before[wal][2], "WAL rewritten (its committed frames must stay as they were)"
    for path in before.keys() - {wal, shm}:
        assert after[path] == before[path], f"{path.name} touched"


def main_file_bindings(database: Path, scratch: Path) -> set[str]:
    """Binding ids in the main database file alone, without its WAL (read from a copy)."""
    copy = scratch / "main-only.db"
    shutil.copyfile(database, copy)
    connection = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
    try:
        return {row[0] for row in connection.execute("SELECT id FROM conntrack_helpers")}
    except sqlite3.OperationalError:  # the table itself is only in the WAL
        return set()
    finally:
        connection.close()


class Client:
    def __init__(self, server: ServerProcess) -> None:
        self.http = httpx.Client(base_url=server.url, headers=server.auth_headers(), timeout=10)

    def create_router(self, name: str) -> httpx.Response:
        return self.http.post("/v2.0/routers", json={"router": {"name": name, "project_id": "p"}})

    def create_binding(self, router_id: str, port: int) -> httpx.Response:
        body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
        return self.http.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)

    def binding_ids(self, router_id: str) -> set[str]:
        response = self.http.get(f"/v2.0/routers/{router_id}/conntrack_helpers")
        assert response.status_code == 200, response.text
        return {b["id"] for b in response.json()["conntrack_helpers"]}

    def router_ids(self) -> set[str]:
        response = self.http.get("/v2.0/routers")
        assert response.status_code == 200, response.text
        return {r["id"] for r in response.json()["routers"]}

    def audit_event_ids(self) -> set[str]:
        response = self.http.get("/v2.0/audit_events")
        assert response.status_code == 200, response.text
        return {e["id"] for e in response.json()["audit_events"]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    running = ServerProcess(tmp_path / "data", tmp_path / "logs", args=("--resync-interval", "3"))
    running.start()
    try:
        yield running
    finally:
        running.kill()


def assert_unavailable(response: httpx.Response, why: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["NeutronError"]
    assert error["type"] == "ServiceUnavailable"
    assert why in error["message"]


@pytest.mark.kernel
def test_database_moved_away_and_back_loses_no_acknowledged_write(
    server: ServerProcess, tmp_path: Path
) -> None:
    database = server.data_dir / "cthm.db"
    moved = server.data_dir / WAY
    wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
    client = Client(server)
    acknowledged: dict[str, set[str]] = {}  # router id -> binding ids answered 201

    router = client.create_router("kept")
    assert router.status_code == 201, router.text
    router_id = router.json()["router"]["id"]
    acknowledged[router_id] = set()
    for port in (2101, 2102, 2103):
        created = client.create_binding(router_id, port)
        assert created.status_code == 201, created.text
        acknowledged[router_id].add(created.json()["conntrack_helper"]["id"])
    # The premise of the report: committed writes that live only in the WAL so far.
    assert not acknowledged[router_id] <= main_file_bindings(database, tmp_path)
    assert wal.stat().st_size > 0

    os.rename(database, moved)
    before = {path: fingerprint(path) for path in (moved, wal, shm)}
    deadline = time.monotonic() + 4  # long enough for the agent's resync to run while away
    while time.monotonic() < deadline:
        assert_unavailable(client.create_binding(router_id, 2199), "missing")
        assert_unavailable(client.http.get("/v2.0/routers"), "missing")
        assert_unavailable(client.http.get("/healthz"), "missing")
        time.sleep(0.5)
    # A stranger's empty file at the path (what SQLite itself would have made) is not ours:
    # cthm must not open it, or SQLite would delete the WAL it finds beside an empty database.
    database.touch()
    assert_unavailable(client.create_binding(router_id, 2199), "replaced")
    assert_unavailable(client.http.get(f"/v2.0/routers/{router_id}"), "replaced")
    assert database.stat().st_size == 0
    assert_untouched(before, {path: fingerprint(path) for path in (moved, wal, shm)}, wal, shm)
    database.unlink()

    os.rename(moved, database)
    # Back by itself, without a restart.
    created = client.create_binding(router_id, 2104)
    assert created.status_code == 201, created.text
    acknowledged[router_id].add(created.json()["conntrack_helper"]["id"])
    other = client.create_router("after")
    assert other.status_code == 201, other.text
    other_id = other.json()["router"]["id"]
    created = client.create_binding(other_id, 2105)
    assert created.status_code == 201, created.text
    acknowledged[other_id] = {created.json()["conntrack_helper"]["id"]}
    assert all(client.binding_ids(r) == ids for r, ids in acknowledged.items())
    events = client.audit_event_ids()
    assert len(events) >= 1 + 1 + 3 + 1 + 1 + 1  # token, routers, bindings
    client.http.close()

    assert server.stop() == 0
    logged = server.stderr + server.stdout
    assert "Traceback" not in logged
    # Said clearly, and not once per request or per agent retry.
    assert 1 <= logged.count("database file") <= 6, logged
    server.start()
    client = Client(server)
    try:
        assert acknowledged.keys() <= client.router_ids()
        assert all(client.binding_ids(r) == ids for r, ids in acknowledged.items())
        assert events <= client.audit_event_ids()
    finally:
        client.http.close()


# --- the store itself (no server): fast, and the agent reads through the same store -------


def test_store_never_creates_or_opens_a_file_that_is_not_its_own(tmp_path: Path) -> None:
    database = tmp_path / "cthm.db"
    moved = tmp_path / WAY
    store = Store(f"sqlite:///{database}")
    store.migrate()
    try:
        with store.unit_of_work() as repo:
            kept = repo.add_router(new_router(name="kept", project_id="p"))
        os.rename(database, moved)
        wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
        before = {path: fingerprint(path) for path in (moved, wal, shm)}
        for write in (False, True):
            with pytest.raises(Unavailable, match="missing"), store.unit_of_work(write=write):
                pass
        with pytest.raises(Unavailable, match="missing"):
            store.check_health()
        assert not database.exists()
        database.touch()  # an empty file at the path: opening it would delete our WAL
        with pytest.raises(Unavailable, match="replaced"), store.unit_of_work(write=False):
            pass
        assert database.stat().st_size == 0
        assert {path: fingerprint(path) for path in (moved, wal, shm)} == before
        database.unlink()
        os.rename(moved, database)
        with store.unit_of_work() as repo:
            repo.add_router(new_router(name="after", project_id="p"))
    finally:
        store.close()
    reopened = Store(f"sqlite:///{database}")
    try:
        with reopened.unit_of_work(write=False) as repo:
            assert repo.get_router(kept.id).name == "kept"
            assert len(repo.list_router_ids()) == 2
    finally:
        reopened.close()


def test_closing_while_the_file_is_away_keeps_its_wal(tmp_path: Path) -> None:
    # Shutdown while the file is away must neither checkpoint nor delete its -wal and -shm.
    database = tmp_path / "cthm.db"
    store = Store(f"sqlite:///{database}")
    store.migrate()
    with store.unit_of_work() as repo:
        kept = repo.add_router(new_router(name="kept", project_id="p"))
    os.rename(database, tmp_path / WAY)
    store.close()
    assert Path(f"{database}-wal").exists()
    assert Path(f"{database}-shm").exists()
    assert not database.exists()
    os.rename(tmp_path / WAY, database)
    reopened = Store(f"sqlite:///{database}")
    try:
        with reopened.unit_of_work(write=False) as repo:
            assert repo.get_router(kept.id).name == "kept"
    finally:
        reopened.close()


def test_initialisation_creates_the_file_only_where_no_wal_is_left(tmp_path: Path) -> None:
    database = tmp_path / "cthm.db"
    orphan = Path(f"{database}-wal")
    orphan.write_bytes(b"committed data of a database that was moved away")
    store = Store(f"sqlite:///{database}")
    try:
        with pytest.raises(Unavailable, match="-wal"):
            store.migrate()
    finally:
        store.close()
    assert not database.exists()
    assert orphan.read_bytes().startswith(b"committed data")

    orphan.unlink()
    fresh = Store(f"sqlite:///{database}")
    try:
        fresh.migrate()  # first initialisation: creates it, private to its owner
        assert database.stat().st_mode & 0o777 == 0o600
        with fresh.unit_of_work(write=False) as repo:
            assert repo.list_router_ids() == []
    finally:
        fresh.close()
