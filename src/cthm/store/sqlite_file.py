"""The SQLite database file a store opened, and nothing else at its path.

Why this exists: asked to open a path whose file is gone, SQLite creates a new empty file, and
a connection that finds an empty database deletes the `-wal` beside it, although that WAL holds
the committed writes of the file that was moved away (issue 10: `mv cthm.db x; request;
mv x cthm.db` lost writes acknowledged with 201). So:

- the file is created once, explicitly, at initialisation (`create_if_missing`), and never
  beside a `-wal` or `-journal` left there (they may be another file's committed data);
- connections open it with `mode=rw`: a missing file is an error, never a new file;
- before each unit of work and around each new connection, the device and inode at the path
  are compared with those of the file first opened (`check`). While they differ, everything is
  refused with Unavailable and nothing is opened, closed, checkpointed or deleted: connections
  already open stay open, so no close runs while the file is away (and SQLite itself skips the
  close-time checkpoint and WAL delete when its file has moved; a test checks this SQLite does);
- when the original file is back at the path, `check` passes again and work resumes by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cthm.domain import Unavailable

log = logging.getLogger(__name__)

FILE_MODE = 0o600
# Files whose presence means a database lived at this path: never create an empty one beside
# them (SQLite would discard a WAL it finds next to an empty database).
LEFTOVERS = ("-wal", "-journal")
LOG_INTERVAL = 60.0  # seconds between reminders while the file stays away

MISSING = "the database file is missing (moved or deleted); cthm resumes when it is back"
REPLACED = (
    "the database file was replaced by another file; cthm resumes when the original is back "
    "(restart cthm to use the new one)"
)


class SqliteFile:
    """One SQLite file by path, pinned to the device and inode first seen there."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._problem: str | None = None  # what was last logged, None when all is well
        self._logged_at = 0.0
        # A file not there yet is created by create_if_missing, or first seen by check().
        with contextlib.suppress(OSError):
            self._identity = _identity(self.path.stat())

    @property
    def uri(self) -> str:
        """The SQLite URI that opens the file and never creates it."""
        return f"file:{quote(str(self.path))}?mode=rw"

    def create_if_missing(self) -> bool:
        """First initialisation: creates the file empty, private to its owner, if nothing is
        at the path. True if it did. Unavailable if a `-wal` or `-journal` is there without it."""
        if self.path.exists():
            return False
        for suffix in LEFTOVERS:
            leftover = self.path.with_name(self.path.name + suffix)
            if leftover.exists():
                raise Unavailable(
                    f"{self.path.name} is missing but {leftover.name} is there: it may hold "
                    f"committed data of a database moved away; put {self.path.name} back (or "
                    f"move {leftover.name} away if that data is not wanted)"
                )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except FileExistsError:
            return False  # created meanwhile by someone else: theirs, check() decides
        except OSError as exc:
            raise Unavailable(f"cannot create the database file: {exc.strerror or exc}") from exc
        try:
            os.fchmod(fd, FILE_MODE)  # the mode given to open() is masked by the umask
            identity = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        with self._lock:
            self._identity = identity
        log.debug("created the database file %s", self.path)
        return True

    def check(self) -> None:
        """Unavailable unless the file at the path is the one this store opened first."""
        try:
            identity: tuple[int, int] | None = _identity(self.path.stat())
        except (FileNotFoundError, NotADirectoryError):
            identity = None
        except OSError as exc:
            self._report(f"cannot look at the database file: {exc.strerror or exc}")
            raise Unavailable("the database file cannot be checked") from exc
        with self._lock:
            if identity is not None and self._identity is None:
                self._identity = identity  # the first file seen here is ours
            expected = self._identity
        if identity is None:
            self._report(MISSING)
            raise Unavailable(MISSING)
        if identity != expected:
            self._report(REPLACED)
            raise Unavailable(REPLACED)
        self._report(None)

    def connect(self, **params: Any) -> sqlite3.Connection:
        """A new connection (sqlite3.connect keyword arguments), made only while the path holds
        our file, and checked again once open: a file swapped in meanwhile is closed unread."""
        params.pop("uri", None)
        self.check()
        connection: sqlite3.Connection = sqlite3.connect(self.uri, uri=True, **params)
        try:
            self.check()
        except BaseException:
            connection.close()  # nothing was read or written through it: closing touches nothing
            raise
        return connection

    def _report(self, problem: str | None) -> None:
        """Logs when the condition starts, changes or ends, and a reminder at most once a
        LOG_INTERVAL while it lasts: never once per request or per agent retry."""
        now = time.monotonic()
        with self._lock:
            previous = self._problem
            if problem == previous and (problem is None or now - self._logged_at < LOG_INTERVAL):
                return
            self._problem, self._logged_at = problem, now
        if problem is None:
            log.warning("the database file %s is back: cthm resumes", self.path)
        else:
            log.warning("%s: %s; refusing all requests meanwhile", self.path, problem)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino
