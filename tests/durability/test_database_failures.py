"""Durability: a database that cannot take writes gives a clear 503, stores nothing partial,
keeps serving reads, and recovers by itself. Real `cthm serve` processes, real file systems."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cthm.domain import Unavailable, new_router
from cthm.store import Store
from cthm.testing.service import CTHM, clean_env, free_port

pytestmark = pytest.mark.kernel  # needs root: a private mount namespace


class IsolatedServer:
    """`cthm serve` in a private mount namespace whose data dir is a 4 MiB tmpfs: the test can
    fill that disk without touching the machine's own mounts."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = (
            f"mount -t tmpfs -o size=4m tmpfs {data_dir} && "
            f"exec {CTHM} serve --data-dir {data_dir} --port {self.port} --resync-interval 3600"
        )
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            self.stop()
            raise AssertionError(f"server did not start: {log.read_text()}")
        self.token = self.inside(["cat", str(data_dir / "admin.token")]).strip()

    def inside(self, argv: list[str]) -> str:
        """Runs argv in the server's mount namespace (where the tmpfs is)."""
        return subprocess.run(
            ["nsenter", "--target", str(self.process.pid), "--mount", *argv],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    def fill_disk(self) -> None:
        subprocess.run(
            [
                "nsenter",
                "--target",
                str(self.process.pid),
                "--mount",
                "dd",
                "if=/dev/zero",
                f"of={self.data_dir / 'filler'}",
                "bs=64k",
            ],
            capture_output=True,
            timeout=30,
            check=False,  # dd ends with "No space left"
        )

    def free_disk(self) -> None:
        self.inside(["rm", "-f", str(self.data_dir / "filler")])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IsolatedServer]:
    data = tmp_path / "data"
    data.mkdir()
    running = IsolatedServer(data, tmp_path / "serve.log")
    try:
        yield running
    finally:
        assert running.stop() == 0


def names(client: httpx.Client) -> list[str]:
    return sorted(r["name"] for r in client.get("/v2.0/routers").json()["routers"])


def test_full_disk_is_a_clear_503_with_nothing_partial_and_recovers(server: IsolatedServer) -> None:
    with httpx.Client(base_url=server.url, headers={"X-Auth-Token": server.token}) as client:

        def create(name: str) -> httpx.Response:
            return client.post("/v2.0/routers", json={"router": {"name": name, "project_id": "p"}})

        assert create("before").status_code == 201
        server.fill_disk()
        refused = [create(f"during-{i}") for i in range(3)]
        for response in refused:
            assert response.status_code == 503, response.text
            error = response.json()["NeutronError"]
            assert error["type"] == "ServiceUnavailable"
            assert "disk is full" in error["message"]
        assert names(client) == ["before"], "reads still work and nothing partial was stored"

        server.free_disk()
        assert create("after").status_code == 201
        assert names(client) == ["after", "before"]


def test_a_vanished_database_file_refuses_writes_instead_of_losing_them(tmp_path: Path) -> None:
    # SQLite connections keep an unlinked file working; an acknowledged write into it would
    # be gone after a restart. The store must refuse it.

    database = tmp_path / "cthm.db"
    store = Store(f"sqlite:///{database}")
    store.migrate()
    try:
        with store.unit_of_work() as repo:
            repo.add_router(new_router(name="kept", project_id="p"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        with pytest.raises(Unavailable, match="missing"), store.unit_of_work() as repo:
            repo.add_router(new_router(name="lost", project_id="p"))
        with pytest.raises(Unavailable):
            store.check_health()
        assert not database.exists()
    finally:
        store.close()
