"""A real `cthm serve` process for tests: free loopback port, health wait, stop by pid, and the
admin token the server wrote into its data directory on its first start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

CTHM = Path(sys.executable).with_name("cthm")  # the virtualenv's console script
# Only a failing start waits this long: on a loaded 2-core machine (two test workers, each with
# its PostgreSQL) a start has been seen to take over 30 s; an idle one takes about a second.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 3
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name; cthm.cli.service writes it)
TOKEN_HEADER = "X-Auth-Token"  # noqa: S105 (a header name)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any CTHM_* setting, plus `extra`.

    The orphan sweep stays on (the default): it deletes only kernel state marked with the
    server's own deployment identity, which a test server's fresh database shares with no other
    cthm (a live service's, or a parallel test run's).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTHM_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`cthm serve` on a free loopback port; stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        data_dir: Path,
        log_dir: Path,
        *,
        port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        location_flags: bool = True,
    ) -> None:
        """location_flags=False leaves --data-dir and --port out: `args` or `env` must say them."""
        self.data_dir = data_dir
        self.location_flags = location_flags
        self.fixed_port = port is not None
        self.args = args
        self.env = env or {}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self._use_port(port or free_port())
        self.process: subprocess.Popen[bytes] | None = None

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._stdout_path = self.log_dir / f"serve-{port}.out"
        self._stderr_path = self.log_dir / f"serve-{port}.err"

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()

    def start(self) -> None:
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                self._start_once()
                return
            except AssertionError:
                # Another process may take a free port between our probe and the server's bind.
                if self.fixed_port or "cannot listen" not in self.stderr:
                    raise
            self._use_port(free_port())
        self._start_once()

    def _start_once(self) -> None:
        argv = [str(CTHM), "serve"]
        if self.location_flags:
            argv += ["--data-dir", str(self.data_dir), "--port", str(self.port)]
        with self._stdout_path.open("wb") as out, self._stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*argv, *self.args], stdout=out, stderr=err, env=clean_env(**self.env)
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"cthm serve exited with {self.process.returncode}: {self.logs()}"
                )
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.kill()
        raise AssertionError(f"cthm serve not healthy within {START_TIMEOUT}s: {self.logs()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Sends `sig` and waits; a server that does not exit in time is killed and fails."""
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"cthm serve ignored {sig.name}: {self.logs()}") from None

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    @property
    def admin_token(self) -> str:
        """The secret of the admin token this server's first start wrote (mode 0600)."""
        return (self.data_dir / ADMIN_TOKEN_FILE).read_text(encoding="ascii").strip()

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a request as this server's admin."""
        return {TOKEN_HEADER: self.admin_token}

    @property
    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def logs(self) -> str:
        return f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
