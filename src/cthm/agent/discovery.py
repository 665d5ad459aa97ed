"""Which router namespaces exist on this host: the names under /run/netns, followed with inotify.

A node agent reports them to the API (placement by discovery): at start, at once when they
change, and with every heartbeat. The watch is inotify on the directory (created, deleted,
renamed in or out; the directory itself deleted or moved), debounced so `ip netns add` of a
hundred namespaces makes one report, plus a look every few seconds as a safety net (a tmpfs
mounted over the directory after the watch was set hides its events: the look notices the
directory is another one and watches that). Where the directory does not exist yet, its parent
is watched for it to appear (and looked at on the same timer).

inotify is reached with ctypes (no dependency); its descriptor is non-blocking and read after
select(), which also waits on a pipe that stop() writes to, so stopping is immediate.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cthm.domain import InvalidInput, validate_namespace
from cthm.netfilter import NETNS_DIR

log = logging.getLogger(__name__)

IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
DIR_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
PARENT_MASK = IN_CREATE | IN_MOVED_TO | IN_ONLYDIR

DEBOUNCE = 0.05  # seconds of quiet after an event before the directory is read
DEBOUNCE_ROUNDS = 20  # ... waited for at most this many times in a row
POLL_INTERVAL = 5.0  # the safety-net look
READ_SIZE = 64 * 1024


def list_namespaces(netns_dir: Path = NETNS_DIR) -> list[str]:
    """The names under netns_dir that are valid namespace names (what a router may name),
    sorted; [] when the directory does not exist. Subdirectories are no namespaces."""
    try:
        entries = list(os.scandir(netns_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = []
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
            names.append(validate_namespace(entry.name))
        except (InvalidInput, OSError):
            continue
    return sorted(names)


class NamespaceWatcher:
    """Calls on_change(names) from its thread whenever the sorted list of namespace names
    changes (not for the list start() reads)."""

    def __init__(
        self,
        netns_dir: Path,
        on_change: Callable[[list[str]], None],
        *,
        poll_interval: float = POLL_INTERVAL,
        debounce: float = DEBOUNCE,
    ) -> None:
        self._dir = netns_dir
        self._on_change = on_change
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._lock = threading.Lock()
        self._names: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._dir_wd: int | None = None
        self._dir_id: tuple[int, int] | None = None
        self._parent_wd: int | None = None

    @property
    def namespaces(self) -> list[str]:
        with self._lock:
            return list(self._names)

    @property
    def inotify(self) -> bool:
        """Whether changes are followed with inotify (else by the periodic look only)."""
        return self._fd is not None

    def start(self) -> list[str]:
        """Reads the directory, starts following it; returns what it read."""
        if self._thread is not None:
            raise RuntimeError("namespace watcher already started")
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._fd = _inotify().init1(IN_NONBLOCK | IN_CLOEXEC)
        except OSError as exc:
            log.warning(
                "cannot use inotify (%s): looking at %s every %.0fs instead",
                exc,
                self._dir,
                self._poll_interval,
            )
            self._fd = None
        self._follow()
        names = list_namespaces(self._dir)
        with self._lock:
            self._names = names
        self._thread = threading.Thread(target=self._run, name="cthm-agent-netns", daemon=True)
        self._thread.start()
        return names

    def stop(self, timeout: float = 5.0) -> bool:
        self._stop.set()
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # a full pipe: it is awake anyway
                os.write(self._wake_w, b"x")
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("the namespace watcher is still running after %.1fs", timeout)
                return False
        self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = None
        return True

    def _run(self) -> None:
        next_look = time.monotonic() + self._poll_interval
        while not self._stop.is_set():
            fds = [fd for fd in (self._fd, self._wake_r) if fd is not None]
            wait = max(0.0, next_look - time.monotonic())
            try:
                ready, _, _ = select.select(fds, [], [], wait)
            except OSError as exc:  # EINTR is retried by Python; anything else is a bug
                log.error("namespace watcher: select failed: %s", exc)
                self._stop.wait(1.0)
                continue
            if self._stop.is_set():
                return
            if self._fd is not None and self._fd in ready:
                # Debounced: a burst of creations (a hundred `ip netns add`) is one report.
                self._drain()
                for _ in range(DEBOUNCE_ROUNDS):  # bounded: a steady stream still gets looked at
                    if self._stop.wait(self._debounce) or not self._drain():
                        break
            elif time.monotonic() < next_look:
                continue
            else:
                next_look = time.monotonic() + self._poll_interval
            try:
                self._look()
            except Exception:  # the watcher must outlive any surprise; the next look retries
                log.exception("namespace watcher: looking at %s failed", self._dir)

    def _look(self) -> None:
        self._follow()
        names = list_namespaces(self._dir)
        with self._lock:
            if names == self._names:
                return
            self._names = names
        log.info("namespaces on this host: %d (%s)", len(names), _shown(names))
        try:
            self._on_change(names)
        except Exception:
            log.exception("namespace watcher: reporting the change failed")

    def _drain(self) -> bool:
        """Reads every pending event (their content does not matter: the directory is read
        again); True if there were any."""
        if self._fd is None:
            return False
        seen = False
        while True:
            try:
                chunk = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return seen
            except OSError as exc:
                log.warning("namespace watcher: reading inotify events failed: %s", exc)
                return seen
            if not chunk:
                return seen
            seen = True

    def _follow(self) -> None:
        """Watches the directory if it is there (again, if it was replaced), else its parent."""
        if self._fd is None:
            return
        api = _inotify()
        try:
            info = os.stat(self._dir)
            current: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except OSError:
            current = None
        if current is not None and current != self._dir_id:
            try:
                # The same path again gives the same wd when the inode is the same one.
                self._dir_wd = api.add_watch(self._fd, self._dir, DIR_MASK | IN_ONLYDIR)
                self._dir_id = current
            except OSError as exc:
                log.warning("namespace watcher: cannot watch %s: %s", self._dir, exc)
                current = None
        if current is None:
            self._dir_id = None
            if self._parent_wd is None:
                try:
                    self._parent_wd = api.add_watch(self._fd, self._dir.parent, PARENT_MASK)
                except OSError:
                    self._parent_wd = None  # no parent either: the periodic look goes on
        elif self._parent_wd is not None:
            api.rm_watch(self._fd, self._parent_wd)
            self._parent_wd = None


def _shown(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "") or "none"


class _Inotify:
    """libc's inotify calls, typed; OSError with the errno on failure."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init1 = libc.inotify_init1
        self._init1.argtypes = [ctypes.c_int]
        self._init1.restype = ctypes.c_int
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int

    def init1(self, flags: int) -> int:
        return _checked(self._init1(flags))

    def add_watch(self, fd: int, path: Path, mask: int) -> int:
        return _checked(self._add(fd, os.fsencode(path), mask))

    def rm_watch(self, fd: int, wd: int) -> None:
        try:
            _checked(self._rm(fd, wd))
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # already gone with its directory
                raise


def _checked(result: int) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


@functools.cache
def _inotify() -> _Inotify:
    """Loaded on first use: importing cthm loads nothing."""
    return _Inotify()
