"""API replicas on one PostgreSQL database for the replica suite, and the few API calls its
tests make."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx

from cthm.testing import ServerProcess

TOKEN_HEADER = "X-Auth-Token"
PROJECT = "replicas"


class Replicas:
    """`cthm serve --no-agent` processes on one database, and the admin token the first of them
    made."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        self.servers: list[ServerProcess] = []

    def make(self, *args: str) -> ServerProcess:
        """A replica, not started: its own data directory and port, the shared database;
        `args`: more flags of cthm serve."""
        index = len(self.servers) + 1
        server = ServerProcess(
            self.tmp / f"replica{index}",
            self.tmp / f"logs{index}",
            args=("--no-agent", *args),
            env={"CTHM_DATABASE_URL": self.url},
        )
        self.servers.append(server)
        return server

    def start(self, count: int) -> list[ServerProcess]:
        """`count` replicas started at the same time (they race to migrate and to make the first
        token); returns them once all are healthy."""
        made = [self.make() for _ in range(count)]
        errors: list[BaseException] = []

        def start(server: ServerProcess) -> None:
            try:
                server.start()
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(server,)) for server in made]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert not errors, errors
        return made

    def token_files(self) -> list[Path]:
        return [
            server.data_dir / "admin.token"
            for server in self.servers
            if (server.data_dir / "admin.token").exists()
        ]

    @property
    def admin_token(self) -> str:
        files = self.token_files()
        assert len(files) == 1, f"admin.token written by {len(files)} replicas: {files}"
        return files[0].read_text(encoding="ascii").strip()

    def client(
        self, server: ServerProcess, token: str | None = None, **kwargs: Any
    ) -> httpx.Client:
        headers = {TOKEN_HEADER: token or self.admin_token}
        return httpx.Client(base_url=server.url, headers=headers, **{"timeout": 10.0, **kwargs})

    def close(self) -> None:
        for server in self.servers:
            if server.process is not None:
                server.kill()


def create_router(client: httpx.Client, label: str) -> str:
    body = {"router": {"name": label, "project_id": PROJECT, "namespace": f"qrouter-{label}"}}
    response = client.post("/v2.0/routers", json=body)
    assert response.status_code == 201, response.text
    router_id: str = response.json()["router"]["id"]
    return router_id


def create_binding(client: httpx.Client, router_id: str, port: int) -> httpx.Response:
    body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
    return client.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)


def head_revision(client: httpx.Client) -> int:
    response = client.get("/v2.0/watch", params={"since": 0, "timeout": 0})
    assert response.status_code == 200, response.text
    revision: int = response.json()["revision"]
    return revision
