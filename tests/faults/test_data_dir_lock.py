"""One `cthm serve` per data directory: a second start beside a running one exits 2 with one line
naming the holder, before it touches the database or the kernel; once the holder is gone (even
SIGKILLed) the directory is free again."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
from pathlib import Path

import httpx

from cthm.testing.service import CTHM, ServerProcess, clean_env, free_port

START_BOUND = 60.0  # a refused start takes well under a second; this only bounds a hang


def serve(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """A `cthm serve` expected to refuse, bounded in time (killed by run() if it overruns)."""
    argv = [str(CTHM), "serve", "--data-dir", str(data_dir), "--port", str(free_port())]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=START_BOUND,
        env=clean_env(CTHM_AGENT_ENABLED="false"),
        check=False,
    )


def test_a_second_server_on_the_same_data_dir_exits_2_naming_the_holder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, tmp_path / "logs1")
    with first:
        assert first.process is not None
        token = first.admin_token
        second = serve(data_dir)
        assert second.returncode == 2, second
        lines = second.stderr.splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith(f"Error: data directory {data_dir} is in use by another")
        assert f"(pid {first.process.pid} on host {socket.gethostname()})" in lines[0]
        assert second.stdout == ""
        # The first one is untouched: still serving, its token still the only one.
        response = httpx.get(
            f"{first.url}/v2.0/auth_tokens", headers={"X-Auth-Token": token}, timeout=10
        )
        assert response.status_code == 200
        assert len(response.json()["auth_tokens"]) == 1
        first.kill()  # SIGKILL: no chance to clean anything up; the kernel drops the flock

    # Free again: a new server starts on it, and records itself as the holder.
    with ServerProcess(data_dir, tmp_path / "logs2") as again:
        assert again.process is not None
        assert again.admin_token == token
        holder = json.loads((data_dir / "cthm.lock").read_text())
        assert holder == {"pid": again.process.pid, "host": socket.gethostname()}


def test_the_lock_is_taken_before_the_database_is_touched(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    lock = data_dir / "cthm.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": "elsewhere"}).encode())
        result = serve(data_dir)
    finally:
        os.close(fd)
    assert result.returncode == 2, result
    assert f"(pid {os.getpid()} on host elsewhere)" in result.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["cthm.lock"]  # no database, no token
