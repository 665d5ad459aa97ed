"""What the benchmark scripts share: signals that unwind like Ctrl-C, cleanup no signal cuts
short, percentiles, the JSON summary with its exit code, namespaces created and deleted in
bulk (exactly their names), the kernel watched in a namespace (`nft monitor`, or the netlink
watcher with its timestamps), a raw HTTP client, and routers loaded in bulk."""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import insert

from cthm.domain import HelperBinding, HelperCatalog, Protocol, Router, new_binding, new_router
from cthm.store import Store
from cthm.store.tables import BindingRow
from cthm.testing import NamespaceFactory, netns_exists, stop_process

INTERRUPTED_EXIT = 130
NETNS_BATCH = 200  # namespaces per `ip -batch` process
COMMAND_TIMEOUT = 60.0
# The helpers a loaded router's bindings cycle through: ftp/tcp first, so every router holds
# the (ingress, ftp, tcp) set that the measured single writes add to and delete from.
HELPERS = [
    ("ftp", Protocol.TCP),
    ("tftp", Protocol.UDP),
    ("sip", Protocol.UDP),
    ("irc", Protocol.TCP),
]
FIRST_LOADED_PORT = 1000

log = logging.getLogger("bench")


class Interrupted(Exception):
    """SIGTERM/SIGHUP: unwind through every `finally`, as Ctrl-C does."""


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest sample with q% of them at or below it."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    yield


def run_reported(run: Callable[[ExitStack, dict[str, Any]], bool], json_file: Path | None) -> int:
    """Runs `run(stack, summary)` (True: every check held), everything it starts registered on
    the stack; prints the summary as JSON (and writes it to json_file). Exit code: 0 ok, 1 a
    check failed or an error (in the summary's `error`), 130 interrupted."""
    out: dict[str, Any] = {"ok": False}
    code = 1
    with interruptible():
        try:
            with ExitStack() as stack:
                try:
                    out["ok"] = run(stack, out)
                    code = 0 if out["ok"] else 1
                finally:
                    # Cleanup (the stack unwinding) must not be cut short by another signal.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except (KeyboardInterrupt, Interrupted) as exc:
            out["error"] = f"interrupted ({exc or 'SIGINT'})"
            code = INTERRUPTED_EXIT
        except Exception as exc:  # noqa: BLE001 (reported in the summary, then the exit code)
            out["error"] = f"{type(exc).__name__}: {exc}"
            print(f"error: {out['error']}", file=sys.stderr)
    text = json.dumps(out, indent=2, sort_keys=True)
    print(text)
    if json_file is not None:
        json_file.write_text(text + "\n")
    return code


def run_measured(out: dict[str, Any], body: Callable[[ExitStack], None]) -> int:
    """Runs `body(stack)`, everything it starts registered on the stack, recording in `out`
    whether it finished (`ok`) or why not (`error`). Exit code: 0, 1 an error, 130
    interrupted. The measuring scripts that print their own summary use this."""
    code = 0
    with interruptible():
        try:
            with ExitStack() as stack:
                try:
                    body(stack)
                finally:
                    # Cleanup (the stack unwinding) must not be cut short by another signal.
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
            out["ok"] = True
        except (KeyboardInterrupt, Interrupted) as exc:
            out["ok"], out["error"] = False, f"interrupted ({exc or 'SIGINT'})"
            code = INTERRUPTED_EXIT
        except Exception as exc:  # noqa: BLE001 (reported, then the exit code)
            out["ok"], out["error"] = False, f"{type(exc).__name__}: {exc}"
            print(f"error: {out['error']}", file=sys.stderr)
            code = 1
    return code


# --- namespaces --------------------------------------------------------------------------------


class Namespaces:
    """Bulk creation and deletion of exactly the names of one NamespaceFactory (its prefix)."""

    def __init__(self, prefix: str) -> None:
        self.factory = NamespaceFactory(prefix=f"{prefix}{os.getpid() % 100000}-")
        self._pending: list[str] = []  # being added: deleted too if the add was interrupted

    def create(self, labels: list[str]) -> list[str]:
        names = [self.factory.name(label) for label in labels]
        for start in range(0, len(names), NETNS_BATCH):
            chunk = names[start : start + NETNS_BATCH]
            self._pending = list(chunk)
            # -force: go on after a failure, so every created name is adopted below.
            run_command(["ip", "-force", "-batch", "-"], "".join(f"netns add {n}\n" for n in chunk))
            for name in chunk:
                if netns_exists(name):
                    self.factory.adopt(name)
            self._pending = []
            missing = [n for n in chunk if not netns_exists(n)]
            if missing:
                raise RuntimeError(f"could not create namespaces {missing[:5]}...")
        return names

    def cleanup(self) -> list[str]:
        """Deletes every namespace created (batched, then one by one what is left)."""
        for name in self._pending:
            if netns_exists(name) and name not in self.factory.created:
                self.factory.adopt(name)
        self._pending = []
        names = [n for n in self.factory.created if netns_exists(n)]
        for start in range(0, len(names), NETNS_BATCH):
            chunk = names[start : start + NETNS_BATCH]
            try:
                run_command(
                    ["ip", "-force", "-batch", "-"], "".join(f"netns del {n}\n" for n in chunk)
                )
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                log.warning("batch delete failed (%s): deleting one by one", exc)
        return self.factory.cleanup()


def run_command(argv: list[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# --- the kernel, watched -----------------------------------------------------------------------


class NftMonitor:
    """`nft monitor` inside one namespace; every line with the time it was read. The kernel
    sends a transaction's events once it committed, so a line's time is when the kernel held
    the change (plus the monitor's wake-up)."""

    def __init__(self, namespace: str) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "nft", "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put((time.perf_counter(), line))

    def drain(self) -> None:
        while True:
            try:
                self.lines.get_nowait()
            except queue.Empty:
                return

    def wait_for(self, match: Callable[[str], bool], since: float, timeout: float) -> float | None:
        """The read time of the first line after `since` that `match`es; None on timeout."""
        deadline = time.perf_counter() + timeout
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return None
            try:
                at, line = self.lines.get(timeout=remaining)
            except queue.Empty:
                return None
            if at >= since and match(line):
                return at

    def close(self) -> None:
        stop_process(self.process)


WATCHER = Path(__file__).with_name("netlink_watch.py")
WATCH_READY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Committed:
    """One nf_tables transaction that changed what `inet cthm`'s sets hold."""

    at: float  # time.perf_counter() when the watcher read its first notification
    added: frozenset[int]
    removed: frozenset[int]


class KernelWatch:
    """netlink_watch.py inside one namespace: each transaction's ports added and removed, with
    the time the kernel's notification was read (taken in the watcher, not when this process
    gets to it: the bench's own client does not delay it)."""

    def __init__(self, namespace: str) -> None:
        self.commits: queue.Queue[Committed | str] = queue.Queue()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, str(WATCHER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()  # subscribed: later commits are all seen
        if ready.strip() != "ready":
            self.close()
            raise RuntimeError(f"netlink watcher in {namespace}: {ready!r}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            fields = line.split()
            if len(fields) == 4:
                self.commits.put(
                    Committed(int(fields[0]) / 1e9, _ports(fields[2]), _ports(fields[3]))
                )
            else:
                self.commits.put(line.strip())  # "overrun": a lost notification
        self.commits.put("watcher ended")

    def drain(self) -> None:
        while True:
            try:
                self.commits.get_nowait()
            except queue.Empty:
                return

    def wait_for(self, port: int, held: bool, since: float, timeout: float) -> float | None:
        """When the first transaction after `since` added (held) or removed (not held) `port`;
        None when none did within `timeout`."""
        deadline = time.perf_counter() + timeout
        while (remaining := deadline - time.perf_counter()) > 0:
            try:
                commit = self.commits.get(timeout=remaining)
            except queue.Empty:
                return None
            if isinstance(commit, str):
                raise RuntimeError(f"netlink watcher: {commit}")
            if commit.at >= since and port in (commit.added if held else commit.removed):
                return commit.at
        return None

    def close(self) -> None:
        stop_process(self.process)


def _ports(field: str) -> frozenset[int]:
    return frozenset(int(p) for p in field[1:].split(",") if p)


class RawHttp:
    """One keep-alive HTTP/1.1 connection with requests prepared before the clock starts: a
    benchmark times the server, not a client library's request building (httpx took ~0.6 ms
    of a POST's 3 here)."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buffer = b""

    def prepare(self, method: str, path: str, body: Any = None) -> bytes:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.headers}"
            f"Content-Length: {len(payload)}\r\n"
        )
        if body is not None:
            head += "Content-Type: application/json\r\n"
        return (head + "\r\n").encode() + payload

    def send(self, request: bytes) -> tuple[int, bytes]:
        """Sends a prepared request; its status and body."""
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        self.sock.sendall(request)
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        if "chunked" in fields.get("transfer-encoding", ""):
            raise RuntimeError("RawHttp: a chunked answer (not expected from cthm's API)")
        body = self._exactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def _until(self, end: bytes) -> bytes:
        while (at := self._buffer.find(end)) < 0:
            self._buffer += self._recv()
        head, self._buffer = self._buffer[:at], self._buffer[at + len(end) :]
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += self._recv()
        body, self._buffer = self._buffer[:size], self._buffer[size:]
        return body

    def _recv(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("RawHttp: the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def holds_port(port: int, line: str) -> bool:
    """A monitor line by which cthm's table holds tcp `port`: the element added to a named set
    (`add element inet cthm ingress-ftp-tcp { 30000 }`) or, in the layout before named sets,
    the map rule written whole (`add rule inet cthm prerouting ct helper set tcp dport map
    { ..., 30000 : "ftp-tcp" }`)."""
    return line.startswith("add ") and "inet cthm" in line and _has_port(port, line)


def lacks_port(port: int, line: str) -> bool:
    """A monitor line by which cthm's table no longer holds tcp `port`: the element deleted
    from its set, or a tcp rule written whole without it (a full rewrite: the map rule of the
    layout before named sets, or a rule matching a set)."""
    if "inet cthm" not in line:
        return False
    if line.startswith("delete element"):
        return _has_port(port, line)
    return line.startswith("add rule") and "tcp dport" in line and not _has_port(port, line)


def _has_port(port: int, line: str) -> bool:
    text = str(port)
    at = line.find(text)
    while at >= 0:
        before = line[at - 1] if at else " "
        after = line[at + len(text)] if at + len(text) < len(line) else " "
        if not before.isdigit() and not after.isdigit():
            return True
        at = line.find(text, at + 1)
    return False


# --- the database ------------------------------------------------------------------------------


@dataclass
class LoadedRouter:
    router: Router
    bindings: list[HelperBinding] = field(default_factory=list)


def load_routers(
    store: Store, catalog: HelperCatalog, plan: list[tuple[str, str, int]]
) -> list[LoadedRouter]:
    """Routers (name, namespace, bindings), each router through the repository (its audit and
    change entries), its bindings inserted in bulk (ports from FIRST_LOADED_PORT, HELPERS in
    turn): setup, not what is measured, and 100,000 bindings one by one would take minutes."""
    loaded = []
    with store.unit_of_work() as repo:
        for name, namespace, size in plan:
            router = repo.add_router(new_router(name=name, project_id="bench", namespace=namespace))
            entry = LoadedRouter(router)
            for b in range(size):
                helper, protocol = HELPERS[b % len(HELPERS)]
                entry.bindings.append(
                    new_binding(
                        catalog,
                        router,
                        protocol=protocol,
                        port=FIRST_LOADED_PORT + b,
                        helper=helper,
                    )
                )
            loaded.append(entry)
    now = datetime.now(UTC)
    rows = [
        {
            "id": b.id,
            "router_id": b.router_id,
            "project_id": b.project_id,
            "protocol": b.protocol.value,
            "port": b.port,
            "helper": b.helper,
            "direction": b.direction.value,
            "status": "PENDING",
            "status_reason": "",
            "revision_number": 1,
            "created_at": now,
            "updated_at": now,
        }
        for entry in loaded
        for b in entry.bindings
    ]
    for start in range(0, len(rows), 10000):
        with store.unit_of_work() as repo:
            # Bench-only bulk insert, outside the product's API (as bench.py's reset).
            repo._session.execute(insert(BindingRow), rows[start : start + 10000])
    return loaded
