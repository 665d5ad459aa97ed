"""`cthm serve --no-agent --workers N`: N API processes accepting on one listening socket.

The parent binds the socket, migrates the database and makes the first admin token (once, as a
single server does), closes every database connection, and only then forks: a fork copies one
thread and the parent's memory, so nothing shared (a pooled connection, a lock some thread
held) may exist at that moment. Each worker builds its own store (engine, pool), WatchHub and
change listener, and serves with uvicorn on the inherited socket; the kernel hands each new
connection to one of the processes waiting in accept.

What is per process: the failure throttle (a client guessing tokens is slowed down by each
worker apart), metrics, and the wake-ups of waiting watches: on PostgreSQL every worker's
listener hears every commit (LISTEN/NOTIFY); on SQLite a watch served by one worker hears of a
commit made by another at its next re-read of the database (watch.RECHECK_INTERVAL, 1 s), not
at once. SQLite writers of all workers take turns (store/writer_turns.py).

Supervision is deliberately simple: SIGTERM or SIGINT to the parent is passed to every worker
(each finishes its open requests, as a single server does) and the parent exits 0 once they
are gone. A worker that dies on its own is logged, the others are stopped, and the parent
exits 1: under systemd (Restart=on-failure) the whole server restarts, rather than carrying
on with fewer workers than configured. Workers die with the parent (PR_SET_PDEATHSIG), so a
parent that is killed outright leaves no process accepting on its port.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# How long workers get to finish open requests after SIGTERM before they are killed (uvicorn's
# graceful shutdown, GRACEFUL_SHUTDOWN_SECONDS in cli/server.py, plus the store's close).
STOP_GRACE = 40.0
MAX_WORKERS = 64
_PR_SET_PDEATHSIG = 1
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


def run_workers(count: int, work: Callable[[int], int]) -> int:
    """Forks `count` workers, each running `work(index)` (1-based; its result is the
    worker's exit status), and supervises them until SIGTERM or SIGINT (then 0) or until one
    exits on its own (then 1, the others stopped). Call it with no other thread running."""
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:  # a fork would copy their locks in whatever state they are in
        raise RuntimeError(f"threads are running before the workers are forked: {others}")
    for stream in (sys.stdout, sys.stderr):  # else each worker would write it again
        stream.flush()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    children: dict[int, int] = {}
    try:
        parent = os.getpid()
        for index in range(1, count + 1):
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the worker; its coverage is not collected)
                os._exit(_worker(parent, previous, work, index))
            children[pid] = index
        log.info("%d API workers serving (pids %s)", count, ", ".join(str(pid) for pid in children))
        return _supervise(children)
    finally:
        _stop(children)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker(
    parent: int, mask: set[int | signal.Signals], work: Callable[[int], int], index: int
) -> int:  # pragma: no cover (runs in the forked worker)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before the line above took effect
            return 1
        return work(index)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("API worker %d failed", index)
        return 1
    finally:
        logging.shutdown()


def _die_with_parent() -> None:  # pragma: no cover (runs in the forked worker)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("cannot tie the worker to its parent: it outlives a killed parent")


def _supervise(children: dict[int, int]) -> int:
    """Waits for a stop signal or a worker's end; the parent's exit status."""
    while True:
        for pid, status in _reap(children):
            index = children.pop(pid)
            log.error(
                "API worker %d (pid %d) ended on its own (%s); stopping the others",
                index,
                pid,
                _describe(status),
            )
            return 1
        info = signal.sigtimedwait(_SIGNALS, 1.0)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            log.info("stopping the %d API workers", len(children))
            return 0


def _reap(children: dict[int, int]) -> list[tuple[int, int]]:
    ended = []
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            ended.append((pid, status))
    return ended


def _stop(children: dict[int, int]) -> None:
    """SIGTERM to every living worker, then waits for them; any still there after STOP_GRACE
    is killed."""
    for pid in children:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while children:
        for pid, status in _reap(children):
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                log.warning("API worker %d (pid %d) stopped: %s", index, pid, _describe(status))
        if not children:
            return
        if time.monotonic() > deadline:
            for pid, index in children.items():
                log.error("API worker %d (pid %d) did not stop in time: killed", index, pid)
                _signal(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            children.clear()
            return
        signal.sigtimedwait({signal.SIGCHLD}, 0.2)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone; reaped next
        os.kill(pid, sig)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
