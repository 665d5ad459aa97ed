"""Full syncs in kernel-worker processes: the agent's second core (issue 14).

A full sync of a router costs ~1.5 ms of CPU, most of it Python (render, parse, the runner's
bookkeeping) and nft's C work; in one process the GIL runs all of it one thread at a time, and
libnftables may not be used from two threads at once (libnftables.py). So a burst of full
syncs (an agent's start, its periodic resync, a node's routers after a restart) is shared with
worker PROCESSES, each with its own libnftables runner and backend: the agent sends
(namespace, assignments, desired table), the worker does render, read, apply and read-back
(NftablesBackend.sync, the same code) and answers (table before, table read back), which the
agent's reconciler checks as it checks its own.

A sync goes to the worker that synced the namespace last (its libnftables context and last
listing are there: a no-op resync lists nothing), at first the one its name hashes to; when
that one is busy, to another idle one; when none is idle, it waits behind a worker's one sync
in progress (home first), and only when every worker has one waiting already does it run in
the agent's process as without workers (a no-op there is answered by the agent's own last
listing). Waiting ~1 ms for a worker costs the agent less than the sync itself: its process,
whose reconciles hold the GIL, is what a burst waits for (measured, cold 100 x 10 on 2 CPUs,
two workers: 91-96 -> 82-89 ms); a sync never waits behind more than one, so behind a worker
that hangs at most one more waits, until the timeout kills it (then it runs here). The one
waiting is sent at once (pipelined: `_Worker`), so the worker goes on to it as soon as it
answered the first, not when the agent's thread behind got the GIL back (in a cold 100 x 10,
~5-10 ms a worker spent idle so). The workers
start when the agent says a burst is coming (`expect`: its resync of at least `start_after`
routers), or at the first syncs once `start_after` of them overlapped: a node with a few
routers never pays for them. Until a started worker says it is ready (its imports: ~0.2 s), its
syncs stay in the agent's process.

Failures are the caller's ordinary errors: a worker that dies or does not answer within
`timeout` is killed (by its pid) and the sync raises NftOther (the router is retried as any
failed sync is; being one nft transaction, an apply the worker did not finish left the old
table); the next sync for it starts a new worker, at most one start a second. nft's own errors
come back as the same NftError classes, with their message and namespace. `close()` ends the
workers: their end of the socket closes, each finishes what it runs and exits; one that does
not within two seconds is killed.

The socket between the two is a private socketpair; messages are pickled
(multiprocessing.connection), which is safe only because both ends are this program: the
worker is started by the agent, with the socket as its only inherited descriptor. Tables go as
tuples of plain values, not as dataclasses (pickling a thousand Assignments costs ~3 ms and
unpickling ~4, measured; their plain values ~0.1), and a table the worker read back equal to
the desired one comes back as a word: the agent uses its own desired table, which the worker
compared the read-back with (the reconciler then checks it by identity).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import (
    NftError,
    NftOther,
    UnsafeValue,
)
from cthm.netfilter.model import HelperObject, KernelTable
from cthm.netfilter.netns import NETNS_DIR, UnsafeNamespace
from cthm.netfilter.worker_channel import Channel

log = logging.getLogger(__name__)

WORKER_MODULE = "cthm.netfilter.sync_worker"  # the worker's `python -m` entry point
SyncResult = tuple[KernelTable | None, KernelTable | None]
# Where a worker's last listing of the namespace stands: (st_dev, st_ino) of the namespace
# instance it listed and the ruleset generation id it listed at (NftablesBackend adopts it).
Seen = tuple[int, int, int]
DEFAULT_TIMEOUT = 120.0  # a full sync of a router of 10,000 ports takes well under a second
START_AFTER = 4  # overlapping syncs before the workers are started (module doc)
# libnftables contexts a worker keeps (the agent's runner: 256), their nft caches emptied after
# each sync (LibNftablesRunner keep_caches): ~160 KB each instead of ~700, so ~960 fit in the
# memory 256 took, and a cold sync of 1000 routers makes no context anew (measured, one
# process, 500 namespaces in turn: 1.16 -> 0.92 ms of CPU a full sync, RSS 298 -> 195 MB). The
# context's own socket must stay below FD_SETSIZE (libnftables.py): beyond ~1000 the runner
# frees one for each new one anyway.
WORKER_CONTEXTS = 960
_RESTART_GAP = 1.0  # seconds between two starts of one worker
_STOP_WAIT = 2.0


def _error_classes(root: type[Exception]) -> list[type[Exception]]:
    found = [root]
    for sub in root.__subclasses__():
        found += _error_classes(sub)
    return found


# The errors a worker sends back as themselves (name -> class): every NftError (the namespace
# checks' UnsafeNamespace included, once netns is imported, as it is above) and UnsafeValue;
# anything else is NftOther.
_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (*_error_classes(NftError), UnsafeValue)
}


def default_process_count() -> int:
    """Workers for this machine: one per CPU this process may run on, at most 4; none on one
    CPU (the agent's process has it all already)."""
    cpus = len(os.sched_getaffinity(0))
    return 0 if cpus < 2 else min(cpus, 4)


def _worker_environment() -> dict[str, str]:
    """What a worker inherits of the environment: how to find Python and cthm, the locale; not
    cthm's settings (a database URL may hold a password the worker never needs)."""
    keep = ("PATH", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ")
    return {name: os.environ[name] for name in keep if name in os.environ}


def _error_reply(exc: BaseException) -> tuple[str, str, str, str | None]:
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "NftOther"
    if isinstance(exc, NftError):
        return ("error", name, exc.message, exc.namespace)
    if isinstance(exc, UnsafeValue):
        return ("error", name, str(exc), None)
    return ("error", name, f"kernel worker: {type(exc).__name__}: {exc}", None)


def _rebuilt(name: str, message: str, namespace: str | None) -> Exception:
    """The worker's error as the agent's own: same class, message and namespace (built without
    the classes' __init__, whose arguments differ)."""
    cls = _ERRORS.get(name, NftOther)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if isinstance(exc, NftError):
        exc.message = message
        exc.namespace = namespace
    if isinstance(exc, UnsafeNamespace):
        exc.reason = message
    return exc


class _WorkerGone(Exception):
    """The worker ended before it answered this call, which waited behind another: the kernel
    is as if the call was never sent (the worker was killed), so the caller runs it itself."""


class _Worker:
    """One worker process, seen from the agent. Calls are PIPELINED: each is sent at once (the
    worker reads the next from its socket as soon as it answered one, never idle while the
    agent's thread behind waits for the GIL), and its answers, which come in the order of the
    calls, are read one at a time by whichever caller waits (`lock`), each answer kept for its
    caller (by ticket: the calls' order) and its caller woken at once (`_answered`), not when
    the reader's own answer came."""

    def __init__(self, index: int, command: list[str]) -> None:
        self.index = index
        self._command = command
        self.lock = threading.Lock()  # reading answers, start and stop
        self._send_lock = threading.Lock()  # sending, and changing the connection
        self.in_flight = 0  # counted under the pool's lock
        self.ready = False
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Channel | None = None
        self._started_at = -_RESTART_GAP
        self._sent = 0  # tickets given (calls sent), under _send_lock
        self._read = 0  # the ticket of the next answer to read, under lock
        self._answers: dict[int, Any] = {}  # answers read for callers yet to take them
        self._lost_before = 0  # tickets below it that have no answer never get one
        # Guards _reading (a caller is reading an answer) and wakes callers when an answer is
        # read or the process ended; never held while waiting for `lock`.
        self._answered = threading.Condition(threading.Lock())
        self._reading = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Starts the process unless it runs or started less than a second ago (a crash loop
        is not a fork loop). Never waits for it: `is_ready()` says when it answers."""
        if self._process is not None or time.monotonic() - self._started_at < _RESTART_GAP:
            return
        self._started_at = time.monotonic()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(  # our own module, no shell
                [*self._command, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
                env=_worker_environment(),
            )
        except OSError as exc:
            ours.close()
            log.warning("cannot start kernel worker %d: %s", self.index, exc)
            return
        finally:
            theirs.close()
        with self._send_lock:
            self._process, self._conn = process, Channel(ours)
        log.info("kernel worker %d started (pid %d)", self.index, process.pid)

    def is_ready(self) -> bool:
        """Whether the worker said it is ready (asked without waiting)."""
        if self.ready:
            return True
        if self._conn is None or not self.lock.acquire(blocking=False):
            return False
        try:
            if self._conn is not None:
                self.ready = self._conn.receive_now() == ("ready",)
        except (EOFError, OSError):
            self._end("exited before it was ready")
        finally:
            self.lock.release()
        return self.ready

    def call(self, request: tuple[Any, ...], timeout: float) -> Any:
        """The worker's answer to `request` (its error raised as the agent's own); _WorkerGone
        when the worker ended while the call waited behind another."""
        ticket = self._send(request)
        while True:
            with self._answered:
                while self._reading and ticket not in self._answers and ticket >= self._lost_before:
                    self._answered.wait()
                if ticket in self._answers:
                    reply = self._answers.pop(ticket)
                    break
                if ticket < self._lost_before:
                    raise _WorkerGone
                self._reading = True
            try:
                with self.lock:  # one answer, whoever's it is
                    if ticket >= self._lost_before:
                        self._read_one(timeout)
            finally:
                with self._answered:
                    self._reading = False
                    self._answered.notify_all()
        if isinstance(reply, Exception):
            raise reply
        if reply[0] == "ok":
            return reply[1]
        raise _rebuilt(*reply[1:])

    def _send(self, request: tuple[Any, ...]) -> int:
        """Sends the call now; its ticket."""
        with self._send_lock:
            conn = self._conn
            if conn is None or not self.ready:
                raise _WorkerGone
            try:
                conn.send(request)
            except OSError as exc:
                failure = exc
            else:
                self._sent += 1
                return self._sent - 1
        # The worker died (or was killed for another call meanwhile: then as if never sent).
        with self.lock:
            if self._conn is not conn:
                raise _WorkerGone
            self._end(f"exited ({failure})")
        raise NftOther(f"kernel worker {self.index} exited during the call") from failure

    def _read_one(self, timeout: float) -> None:
        """Reads the next answer (the caller holds `lock`); a worker that does not give it within
        `timeout` or exits is killed, that answer's caller gets the error and those behind it
        _WorkerGone."""
        conn, ticket = self._conn, self._read
        assert conn is not None  # (its tickets were lost when it ended)
        try:
            self._answers[ticket] = conn.receive(timeout)
            self._read += 1
        except TimeoutError:
            self._answers[ticket] = NftOther(
                f"kernel worker {self.index} did not answer in {timeout:g} s"
            )
            self._end(f"did not answer in {timeout:g} s")
        except (EOFError, OSError) as exc:
            error = NftOther(f"kernel worker {self.index} exited during the call")
            error.__cause__ = exc
            self._answers[ticket] = error
            self._end(f"exited ({exc or 'connection closed'})")

    def _forget_process(self) -> tuple[subprocess.Popen[bytes] | None, Channel | None]:
        """Forgets the process and its connection; the calls sent and not answered lose their
        answer. The caller holds `lock`."""
        with self._send_lock:
            process, conn = self._process, self._conn
            self._process, self._conn, self.ready = None, None, False
            self._lost_before = self._read = self._sent
        with self._answered:
            self._answered.notify_all()
        return process, conn

    def _end(self, why: str) -> None:
        """Kills the process (ours: by its pid) and forgets it. The caller holds `lock`."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()  # first: a call being sent to it then fails instead of blocking
        process, conn = self._forget_process()
        if conn is not None:
            conn.close()
        if process is not None:
            process.wait()
            log.warning(
                "kernel worker %d (pid %d) %s; exit status %s",
                self.index,
                process.pid,
                why,
                process.returncode,
            )

    def stop(self) -> None:
        """Closes the socket (the worker exits after its current call), waits two seconds,
        then kills it. The caller holds `lock`."""
        process, conn = self._forget_process()
        if conn is not None:
            conn.close()
        if process is None:
            return
        try:
            process.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class SyncProcesses:
    """Kernel-worker processes that run NftablesBackend.sync for the agent (module doc).
    Thread-safe."""

    def __init__(
        self,
        count: int,
        *,
        owner: str | None,
        library: str | None = None,
        netns_dir: Path = NETNS_DIR,
        start_after: int = START_AFTER,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if count < 1:
            raise ValueError("at least one kernel worker")
        command = [
            sys.executable,
            "-m",
            "cthm.netfilter.sync_worker",
            "--netns-dir",
            str(netns_dir),
        ]
        if owner is not None:
            command += ["--owner", owner]
        if library is not None:
            command += ["--library", library]
        self._workers = [_Worker(i, command) for i in range(count)]
        self._lock = threading.Lock()
        self._local = 0  # syncs in flight in the agent's own process
        self._overlaps = 0
        self._start_after = start_after
        self._timeout = timeout
        self._closed = False
        self.counts = {"local": 0, "remote": 0}
        # Per namespace, the worker that synced it last (bounded by the routers' namespaces).
        self._placed: dict[str, int] = {}
        # Per namespace, the last desired table sent and its encoding (_encoded).
        self._last: dict[str, tuple[KernelTable, _EncodedTable]] = {}

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [pid for w in self._workers if (pid := w.pid) is not None]

    def sync(
        self,
        namespace: str,
        assignments: Sequence[Assignment],
        want: object,
        local: Callable[[], SyncResult],
    ) -> tuple[KernelTable | None, KernelTable | None, Seen | None]:
        """NftablesBackend.sync(namespace, assignments, want) in a worker (module doc), or
        `local()` (the same in this process) when none may take it: (before, after, where the
        worker's last listing stands, if known; None for a local sync)."""
        with self._lock:
            # The worker that synced the namespace last holds its last listing (a no-op resync
            # then lists nothing); else its home, by the name's hash.
            home = self._placed.get(namespace)
            if home is None:
                home = zlib.crc32(namespace.encode()) % len(self._workers)
            worker = self._workers[home]
            remote = False
            if not self._closed and isinstance(want, KernelTable):
                if self._local or any(w.in_flight for w in self._workers):
                    self._overlaps += 1
                if self._overlaps >= self._start_after:
                    worker.start()  # unless running (or started less than a second ago)
                # An idle worker first, the home one before others (measured, cold 100 x 10
                # on 2 CPUs: 110 -> 90 ms); else one running a sync with none waiting behind
                # it (module doc); else this process.
                order = [
                    self._workers[index % len(self._workers)]
                    for index in range(home, home + len(self._workers))
                ]
                for busy in (0, 1):
                    for worker in order:
                        if worker.in_flight == busy and worker.is_ready():
                            remote = True
                            break
                    if remote:
                        break
            if remote:
                self._placed[namespace] = worker.index
                worker.in_flight += 1
                self.counts["remote"] += 1
            else:
                self._local += 1
                self.counts["local"] += 1
        try:
            if not remote:
                return (*local(), None)
            assert isinstance(want, KernelTable)
            request = ("sync", namespace, *self._encoded(namespace, assignments, want))
            try:
                before, after, seen = worker.call(request, self._timeout)
                return _decoded_table(before, want), _decoded_table(after, want), seen
            except _WorkerGone:
                pass
            # The worker ended (killed after a timeout, or died) while this sync waited.
            with self._lock:
                self.counts["remote"] -= 1
                self.counts["local"] += 1
            return (*local(), None)
        finally:
            with self._lock:
                if remote:
                    worker.in_flight -= 1
                else:
                    self._local -= 1

    def _encoded(
        self, namespace: str, assignments: Sequence[Assignment], want: KernelTable
    ) -> tuple[_EncodedTable, _EncodedAssignments | None]:
        """The request's (desired table, assignments) as plain values (module doc: pickling
        a thousand dataclasses costs milliseconds each way); the assignments None when they
        are the table's (as the reconciler's always are). The last encoding per namespace is
        kept: a resync sends the same desired table again."""
        with self._lock:
            last = self._last.get(namespace)
        if last is not None and last[0] is want:
            table = last[1]
        else:
            table = _encoded_table(want)
            with self._lock:
                self._last[namespace] = (want, table)
        if assignments is want.assignments or tuple(assignments) == want.assignments:
            return table, None
        return table, _encoded_assignments(assignments)

    def expect(self, count: int) -> None:
        """`count` syncs are coming at once: with at least `start_after` of them, every worker
        starts now (without waiting for it), so it is ready for most of them."""
        with self._lock:
            if self._closed or count < self._start_after:
                return
            self._overlaps = max(self._overlaps, self._start_after)
            for worker in self._workers:
                worker.start()

    def wait_ready(self, timeout: float) -> bool:
        """Starts every worker now (not at the first overlap) and waits, at most `timeout`
        seconds, until each is ready: True if all are."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed:
                return False
            for worker in self._workers:
                worker.start()
        for worker in self._workers:
            while not worker.is_ready():
                if worker.pid is None or time.monotonic() > deadline:
                    return False
                time.sleep(0.005)
        return True

    def close(self) -> None:
        """Ends every worker (module doc). Idempotent."""
        with self._lock:
            self._closed = True
        for worker in self._workers:
            with worker.lock:
                worker.stop()


# Tables and assignments as plain values (module doc): an assignment (protocol, port, helper,
# direction), a helper object (name, type, protocol, l3proto), a table (assignments, helper
# objects, garbage, owner). A table read back equal to the desired one is sent as WANT.
_EncodedAssignments = tuple[tuple[str, int, str, str], ...]
_EncodedTable = tuple[
    _EncodedAssignments, tuple[tuple[str, str, str, str], ...], tuple[str, ...], str | None
]
WANT = "want"
_PROTOCOLS = {p.value: p for p in Protocol}
_DIRECTIONS = {d.value: d for d in Direction}


def _encoded_assignments(assignments: Sequence[Assignment]) -> _EncodedAssignments:
    # `_value_`, not `.value` (an enum property: 3.5x slower over a thousand assignments).
    return tuple([(a.protocol._value_, a.port, a.helper, a.direction._value_) for a in assignments])


def _decoded_assignments(values: _EncodedAssignments) -> tuple[Assignment, ...]:
    protocols, directions = _PROTOCOLS, _DIRECTIONS
    return tuple(
        [Assignment(protocols[p], port, helper, directions[d]) for p, port, helper, d in values]
    )


def _encoded_table(table: KernelTable) -> _EncodedTable:
    helpers = tuple(sorted((h.name, h.type, h.protocol.value, h.l3proto) for h in table.helpers))
    return (_encoded_assignments(table.assignments), helpers, table.garbage, table.owner)


def _table(values: _EncodedTable) -> KernelTable:
    assignments, helpers, garbage, owner = values
    objects = frozenset(HelperObject(n, t, _PROTOCOLS[p], l3) for n, t, p, l3 in helpers)
    return KernelTable(_decoded_assignments(assignments), objects, tuple(garbage), owner)


def _reply_table(table: KernelTable | None, want: KernelTable) -> _EncodedTable | str | None:
    """A table the worker read, for its reply: WANT when it equals the desired table."""
    if table is None:
        return None
    return WANT if table == want else _encoded_table(table)


def _decoded_table(value: _EncodedTable | str | None, want: KernelTable) -> KernelTable | None:
    """A reply's table: the caller's own desired table where the worker found it equal."""
    if value is None:
        return None
    if value == WANT:
        return want
    assert not isinstance(value, str)
    return _table(value)


def _sync(backend: Any, namespace: str, want: _EncodedTable, assignments: Any) -> Any:
    """A sync call in the worker: the backend's sync of the decoded request, the reply's
    tables encoded."""
    table = _table(want)
    listed = table.assignments if assignments is None else _decoded_assignments(assignments)
    before, after = backend.sync(namespace, listed, table)
    return _reply_table(before, table), _reply_table(after, table), backend.listed_at(namespace)


def serve(conn: Connection, backend: Any) -> None:
    """A worker process's loop (sync_worker.py): one call at a time until the agent's end of
    the socket closes (then it returns, whether it was waiting for a call or answering one)."""
    try:
        conn.send(("ready",))
        while True:
            request = conn.recv()
            try:
                if request[0] != "sync":
                    raise NftOther(f"kernel worker: unknown call {request[0]!r}")
                reply: tuple[Any, ...] = ("ok", _sync(backend, *request[1:]))
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                reply = _error_reply(exc)
            conn.send(reply)
    except (EOFError, OSError):
        return
