"""`cthm serve --no-agent --workers N`: worker processes on one socket, stopped together."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from cthm_cli_harness import ServerProcess, assert_error, run

WORKERS = 2
ROUNDS = 10  # bursts of new connections until each worker has accepted one
BURST = 12


def test_workers_need_the_agent_off(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run("serve", "--data-dir", str(data_dir), "--workers", "2")
    assert_error(result, 2, "--workers 2 needs --no-agent")
    assert not data_dir.exists()  # refused before anything is touched
    assert_error(run("serve", "--data-dir", str(data_dir), "--workers", "0"), 2, "--workers")


def test_workers_share_one_socket_and_stop_together(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "logs",
        args=("--no-agent", "--workers", str(WORKERS)),
        env={"CTHM_DATABASE_URL": database_url},
    )
    with server:
        assert server.process is not None
        workers = children_of(server.process.pid)
        assert len(workers) == WORKERS, server.logs()
        assert f"{WORKERS} worker processes" in server.stdout.splitlines()[-1]
        headers = server.auth_headers()
        created = httpx.post(
            f"{server.url}/v2.0/routers", json={"router": {"name": "w"}}, headers=headers
        )
        assert created.status_code == 201, created.text
        router_id = created.json()["router"]["id"]
        # Every worker accepts connections, and each sees what another wrote (one database).
        assert accepting(server, workers, router_id) == set(workers), server.logs()
        assert server.stop(signal.SIGTERM) == 0, server.logs()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert "Traceback" not in server.stderr, server.stderr
    assert "stopping the 2 API workers" in server.stderr


def test_a_worker_that_dies_stops_the_server(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "data", tmp_path / "logs", args=("--no-agent", "--workers", str(WORKERS))
    )
    with server:
        assert server.process is not None
        first, second = children_of(server.process.pid)
        os.kill(first, signal.SIGKILL)
        try:
            code = server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError(f"the server went on without a worker: {server.logs()}") from None
    assert code == 1, server.logs()
    assert not Path(f"/proc/{second}").exists()
    assert f"API worker 1 (pid {first}) ended on its own (killed by SIGKILL)" in server.stderr
    assert "Error: an API worker ended on its own" in server.stderr


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, by pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def accepting(server: ServerProcess, workers: list[int], router_id: str) -> set[int]:
    """The workers holding connections that a burst of new clients opened (each answered a
    read of `router_id`); bursts are repeated (at most ROUNDS) until every worker holds one."""
    seen: set[int] = set()
    for _ in range(ROUNDS):
        clients = [
            httpx.Client(base_url=server.url, headers=server.auth_headers()) for _ in range(BURST)
        ]
        try:
            for client in clients:
                response = client.get(f"/v2.0/routers/{router_id}")
                assert response.status_code == 200, response.text
            seen |= connection_owners(server.port, workers)
        finally:
            for client in clients:
                client.close()
        if seen == set(workers):
            break
        time.sleep(0.05)
    return seen


def connection_owners(port: int, pids: list[int]) -> set[int]:
    """Which of `pids` hold an established TCP connection on local `port` (the server's side)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and local_port == port:  # 01: ESTABLISHED
                inodes.add(fields[9])
    owners = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                owners.add(pid)
    return owners
