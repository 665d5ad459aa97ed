"""Runs the peers of peer_endpoints.py inside namespaces: bounded in time, stopped by pid.

Clients return their bytes or raise cthm.testing.TransferFailed (with the stage they reached);
servers are cthm.testing.RunningServer objects (a context manager that stops the process).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cthm.testing import RunningServer, ServerStartFailed, TransferFailed

SCRIPT = Path(__file__).with_name("peer_endpoints.py")
# A Python start inside `ip netns exec`; added to every client's own timeout.
_PROCESS_MARGIN = 10.0
_READY_POLL = 0.02


def namespace_argv(namespace: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, sys.executable, str(SCRIPT), *args]


def start_tftp_server(
    namespace: str, host: str, root: Path, state_dir: Path, *, port: int = 69
) -> RunningServer:
    """The family-agnostic TFTP server of `root` on host:port inside `namespace`."""
    argv = namespace_argv(namespace, "tftp-server", "--host", host, "--port", str(port))
    argv += ["--root", str(root)]
    files = {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}
    process, log_path = _start(argv, state_dir, "tftp6")
    return RunningServer("tftp", namespace, host, port, root, files, process, log_path)


def tftp_get(
    namespace: str, host: str, filename: str, *, port: int = 69, timeout: float = 1.0
) -> bytes:
    """RRQ with one resend: a lost reply fails after about twice `timeout`."""
    args = ["--host", host, "--port", str(port), "--file", filename, "--timeout", str(timeout)]
    return _data(_client(namespace, "tftp", ["tftp-get", *args], timeout * 2))


def ftp_get(
    namespace: str, host: str, filename: str, mode: str, *, port: int = 21, timeout: float = 2.0
) -> bytes:
    """Anonymous RETR in `mode` "active" (PORT/EPRT) or "passive" (PASV/EPSV)."""
    args = ["--host", host, "--port", str(port), "--file", filename, "--mode", mode]
    return _data(_client(namespace, "ftp", ["ftp-get", *args, "--timeout", str(timeout)], timeout))


@dataclass
class UdpReceiver:
    """A process in a namespace waiting (bounded) for one datagram on host:port."""

    process: subprocess.Popen[bytes]
    timeout: float

    def result(self) -> tuple[bytes, str]:
        """The datagram and its sender's address; TransferFailed("udp", "timeout") if none."""
        try:
            out, _ = self.process.communicate(timeout=self.timeout + _PROCESS_MARGIN)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise TransferFailed("udp", "process", "TimeoutExpired", "receiver overran") from exc
        outcome = _outcome("udp", out, self.process.returncode)
        return _data(outcome), str(outcome["peer"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(3)


def start_udp_receiver(
    namespace: str, host: str, port: int, state_dir: Path, *, timeout: float
) -> UdpReceiver:
    """Binds host:port in `namespace`; returns once bound (the caller must `result()` or stop)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / f"udp-{port}.ready"
    ready.unlink(missing_ok=True)
    argv = namespace_argv(namespace, "udp-recv", "--host", host, "--port", str(port))
    argv += ["--timeout", str(timeout), "--ready-file", str(ready)]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    receiver = UdpReceiver(process, timeout)
    if not _wait_ready(ready, process, 10.0):
        receiver.stop()
        raise ServerStartFailed(f"udp receiver in {namespace} on {host}:{port} not ready")
    return receiver


def udp_send(namespace: str, host: str, port: int, payload: str, *, count: int = 5) -> str:
    """Sends `payload` `count` times (50 ms apart); returns the send errors seen, if any."""
    args = ["--host", host, "--port", str(port), "--payload", payload, "--count", str(count)]
    outcome = _client(namespace, "udp", ["udp-send", *args], count * 0.05)
    return str(outcome.get("errors", ""))


def _start(argv: list[str], state_dir: Path, kind: str) -> tuple[subprocess.Popen[bytes], Path]:
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / f"{kind}.ready"
    ready.unlink(missing_ok=True)
    log_path = state_dir / f"{kind}.log"
    with log_path.open("wb") as log:
        # `ip netns exec` execs the command, so the pid is the server's own.
        process = subprocess.Popen(
            [*argv, "--ready-file", str(ready)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    if not _wait_ready(ready, process, 10.0):
        if process.poll() is None:
            process.kill()
            process.wait(3)
        raise ServerStartFailed(f"{kind} server did not start:\n{log_path.read_text()[-2000:]}")
    return process, log_path


def _wait_ready(ready: Path, process: subprocess.Popen[bytes], timeout: float) -> bool:
    for _ in range(int(timeout / _READY_POLL)):
        if ready.exists():
            return True
        if process.poll() is not None:
            return False
        time.sleep(_READY_POLL)
    return False


def _client(namespace: str, protocol: str, args: list[str], timeout: float) -> dict[str, Any]:
    bound = timeout * 3 + _PROCESS_MARGIN  # an FTP transfer has several socket waits
    try:
        result = subprocess.run(
            namespace_argv(namespace, *args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=bound,
        )
    except subprocess.TimeoutExpired as exc:
        raise TransferFailed(
            protocol, "process", "TimeoutExpired", f"killed after {bound}s"
        ) from exc
    return _outcome(protocol, result.stdout, result.returncode, result.stderr)


def _outcome(protocol: str, out: bytes, code: int | None, err: bytes = b"") -> dict[str, Any]:
    try:
        outcome: dict[str, Any] = json.loads(out)
    except ValueError:
        detail = f"exit {code}: {err.decode(errors='replace')[-2000:]}"
        raise TransferFailed(protocol, "process", "NoResult", detail) from None
    if not outcome["ok"]:
        raise TransferFailed(protocol, outcome["stage"], outcome["kind"], outcome["error"])
    return outcome


def _data(outcome: dict[str, Any]) -> bytes:
    return base64.b64decode(outcome["data"])
