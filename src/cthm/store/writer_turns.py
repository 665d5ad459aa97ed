"""SQLite writers take turns, in this process and across processes, before BEGIN IMMEDIATE.

SQLite lets one writer in at a time; the others wait in its busy handler, which sleeps 1, 2,
5, 10 ... up to 100 ms between tries: with several writers that is a p99 of hundreds of
milliseconds. So writers queue here first: threads of one process on a lock (woken at once),
processes (`cthm serve --workers N`, `cthm token recover` beside a server) on an flock of a
file beside the database, `<database>-writers` (flock, not SQLite's fcntl locks: the two never
interfere, and closing this file releases nothing of SQLite's). A process that cannot open that
file still queues its own threads; SQLite's busy handler orders the rest, as before.

Waiting is bounded as SQLite's busy_timeout is: past it the unit goes on and SQLite decides,
so a writer opened inside another still fails as it always did, never hangs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

SUFFIX = "-writers"
FILE_MODE = 0o600
# How often a process waiting for another's turn looks again: from FIRST_POLL, doubling, up
# to MAX_POLL (an flock that blocks could not be given up after the timeout).
FIRST_POLL = 0.0001
MAX_POLL = 0.002


class WriterTurns:
    """database: the SQLite file (None: in-memory, this process's threads only)."""

    def __init__(self, database: Path | None) -> None:
        self.path = None if database is None else database.with_name(database.name + SUFFIX)
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._unusable = False

    @contextlib.contextmanager
    def turn(self, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            yield
            return
        try:
            fd = self._file()
            locked = fd is not None and _flock(fd, deadline)
            try:
                yield
            finally:
                if locked:
                    assert fd is not None
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        """At the store's close (no unit of work runs then; none is waited for)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _file(self) -> int | None:
        """The lock file, opened once (made, private, if missing); None if it cannot be."""
        if self._fd is not None or self._unusable or self.path is None:
            return self._fd
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags, FILE_MODE)
        except OSError:
            self._unusable = True  # a read-only directory, say: SQLite's busy handler orders
        return self._fd


def _flock(fd: int, deadline: float) -> bool:
    """The exclusive flock of `fd`, or False once `deadline` (monotonic) passed."""
    pause = FIRST_POLL
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, MAX_POLL)
