"""FTP and TFTP servers and clients, each a process inside a namespace, all bounded in time.

Servers (pyftpdlib, anonymous read-only with active mode allowed; tftpy, read requests) are
started with `ip netns exec NS python -m cthm.testing._endpoints ...`, waited for with a bounded
poll of a ready file they create after binding, and stopped by pid (terminate, then kill).
Clients run the same way in the client namespace and return the downloaded bytes or raise
TransferFailed, which tells how far they got (`stage`).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import cthm

_ENDPOINTS = "cthm.testing._endpoints"
# A Python start inside `ip netns exec` plus imports; added to every client's own timeout.
_PROCESS_MARGIN = 10.0
_READY_POLL = 0.02

ServerKind = Literal["ftp", "tftp"]


class TrafficError(Exception):
    """Base of the harness's failures."""


class ServerStartFailed(TrafficError):
    """A server process exited or did not become ready in time; carries its log tail."""


class TransferFailed(TrafficError):
    """A client could not complete a transfer.

    `stage` is where it stopped: FTP "connect", "login", "list", "retr", "quit"; TFTP
    "transfer"; TCP probe "timeout", "refused", "unreachable", "error"; any client "process"
    when the process itself failed or overran its bound. `kind` is the exception class name.
    """

    def __init__(self, protocol: str, stage: str, kind: str, detail: str) -> None:
        super().__init__(f"{protocol} failed at {stage}: {kind}: {detail}")
        self.protocol = protocol
        self.stage = stage
        self.kind = kind
        self.detail = detail


@dataclass
class RunningServer:
    """A server process inside a namespace, serving `files` (name -> content) from `root`."""

    kind: ServerKind
    namespace: str
    host: str
    port: int
    root: Path
    files: Mapping[str, bytes]
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self, grace: float = 3.0) -> None:
        """Terminates the process by pid, kills it if it outlives `grace`; idempotent."""
        stop_process(self.process, grace)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_random_file(root: Path, name: str, size: int) -> bytes:
    """Writes `size` random bytes to root/name and returns them."""
    content = secrets.token_bytes(size)
    (root / name).write_bytes(content)
    return content


def start_ftp_server(
    namespace: str,
    host: str,
    root: Path,
    *,
    port: int = 21,
    state_dir: Path | None = None,
    ready_timeout: float = 10.0,
) -> RunningServer:
    """Anonymous read-only FTP of `root` on host:port inside `namespace` (active mode allowed)."""
    return _start_server("ftp", namespace, host, port, root, state_dir, ready_timeout)


def start_tftp_server(
    namespace: str,
    host: str,
    root: Path,
    *,
    port: int = 69,
    state_dir: Path | None = None,
    ready_timeout: float = 10.0,
) -> RunningServer:
    """TFTP (read requests) of `root` on host:port inside `namespace`."""
    return _start_server("tftp", namespace, host, port, root, state_dir, ready_timeout)


def ftp_active_download(
    client_ns: str, host: str, filename: str, timeout: float = 3.0, *, port: int = 21
) -> bytes:
    """Anonymous login, then RETR in active mode (PORT); `timeout` bounds each socket wait."""
    return _client(
        client_ns,
        "ftp",
        ["ftp-get", "--host", host, "--port", str(port), "--file", filename],
        timeout,
    )


def ftp_active_list(
    client_ns: str, host: str, timeout: float = 3.0, *, port: int = 21
) -> list[str]:
    """Anonymous login, then NLST in active mode; returns the names listed."""
    out = _client(client_ns, "ftp", ["ftp-list", "--host", host, "--port", str(port)], timeout)
    return [name for name in out.decode().split("\n") if name]


def tftp_download(
    client_ns: str,
    host: str,
    filename: str,
    timeout: float = 1.0,
    *,
    port: int = 69,
    retries: int = 1,
) -> bytes:
    """RRQ for `filename`; `timeout` is the wait for each packet, resent `retries` times.

    A failed download therefore takes about timeout * (retries + 1).
    """
    argv = ["tftp-get", "--host", host, "--port", str(port), "--file", filename]
    argv += ["--retries", str(retries)]
    return _client(client_ns, "tftp", argv, timeout * (retries + 1), packet_timeout=timeout)


def tcp_probe(client_ns: str, host: str, port: int, timeout: float = 1.0) -> str:
    """Connects from `client_ns`; returns "connected" or the failure stage ("timeout" when a
    firewall drops the SYN, "refused" when it reaches a closed port, "unreachable", "error").
    """
    try:
        _client(client_ns, "tcp", ["tcp-probe", "--host", host, "--port", str(port)], timeout)
    except TransferFailed as exc:
        return exc.stage
    return "connected"


def _start_server(
    kind: ServerKind,
    namespace: str,
    host: str,
    port: int,
    root: Path,
    state_dir: Path | None,
    ready_timeout: float,
) -> RunningServer:
    if state_dir is None:
        state_dir = Path(tempfile.mkdtemp(prefix=f"cthm-{kind}-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / f"{kind}.ready"
    ready.unlink(missing_ok=True)
    log_path = state_dir / f"{kind}.log"
    files = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}
    argv = _namespace_python(namespace, f"{kind}-server")
    argv += ["--host", host, "--port", str(port), "--root", str(root)]
    argv += ["--ready-file", str(ready)]
    with log_path.open("wb") as log:
        # `ip netns exec` execs the command, so the pid is the server's own.
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_child_env()
        )
    server = RunningServer(kind, namespace, host, port, root, files, process, log_path)
    polls = max(1, int(ready_timeout / _READY_POLL))
    for _ in range(polls):
        if ready.exists():
            return server
        if process.poll() is not None:
            raise ServerStartFailed(
                f"{kind} server in {namespace} exited with {process.returncode}:\n"
                + server.log_tail()
            )
        time.sleep(_READY_POLL)
    server.stop()
    raise ServerStartFailed(
        f"{kind} server in {namespace} not ready after {ready_timeout}s:\n" + server.log_tail()
    )


def _client(
    namespace: str,
    protocol: str,
    args: list[str],
    timeout: float,
    *,
    packet_timeout: float | None = None,
) -> bytes:
    argv = _namespace_python(namespace, *args)
    argv += ["--timeout", str(packet_timeout if packet_timeout is not None else timeout)]
    bound = timeout * 3 + _PROCESS_MARGIN  # an FTP transfer has several socket waits
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=bound,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired as exc:
        raise TransferFailed(
            protocol, "process", "TimeoutExpired", f"killed after {bound}s"
        ) from exc
    try:
        outcome = json.loads(result.stdout)
    except ValueError:
        detail = f"exit {result.returncode}: {result.stderr.decode(errors='replace')[-2000:]}"
        raise TransferFailed(protocol, "process", "NoResult", detail) from None
    if not outcome["ok"]:
        raise TransferFailed(protocol, outcome["stage"], outcome["kind"], outcome["error"])
    return base64.b64decode(outcome["data"])


def _namespace_python(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, sys.executable, "-m", _ENDPOINTS, *args]


def _child_env() -> dict[str, str]:
    # The child must import this very cthm, installed or not.
    env = dict(os.environ)
    src = str(Path(cthm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Ends a process this kit started: SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)
