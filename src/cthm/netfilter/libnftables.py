"""Running nft text in-process with libnftables, inside any namespace, from one worker thread.

A libnftables context binds its netlink socket to the network namespace its thread is in when
the context is created (measured). So one dedicated worker thread does all the work: for each
call it opens /run/netns/NAME (netns.open_namespace: never through a symlink, never the host's
namespace), `setns()`s into it (netns.enter), uses a context created in that namespace
(cached: creating one costs far more than an apply), runs, and `setns()`s back to the
namespace it started in. Callers in any thread hand their call to the worker through a queue.

A cached context is keyed by (name, st_dev, st_ino) of /run/netns/NAME. Its socket keeps its
namespace alive, so a context whose namespace file is gone or now has another inode (deleted
and recreated) is freed and never used: otherwise we would write into a zombie namespace that
no router uses any more.

Generations (issue 14). Every commit of an nftables transaction in a namespace moves that
namespace's ruleset generation (the id nft itself keeps its cache by). `run_tracked` reads it
just before and just after a command (NFT_MSG_GETGEN, ~4 us), so the backend can skip listing a
table no commit touched since it was last listed (without even entering the namespace), and can
tell that a table it lists is exactly the one its own transaction just committed. A generation
is `(context serial, id)`: the serial is new for every context made, and a cached context (its
socket) pins its namespace, so an equal generation is the same namespace instance, never a new
one that reuses the name or the inode.

The netlink socket that asks is made with the context, in its namespace, and kept with it:
closing a netfilter netlink socket after a commit waits for the kernel's deferred table
destruction (an RCU grace period, ~10 ms, measured), so a socket per call would cost more than
the listing it saves. It is kept at a descriptor above 1023, as libnftables select()s on its
own sockets and glibc aborts the process on a descriptor past FD_SETSIZE; where the open-file
limit leaves no room up there, generations are not read (every read lists, as before).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import queue
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from cthm.netfilter.errors import (
    NamespaceNotFound,
    NamespaceNotPermitted,
    NftOther,
    is_permission,
    translate_error,
)
from cthm.netfilter.model import check_namespace
from cthm.netfilter.netns import NETNS_DIR, enter, open_namespace, setns_binding
from cthm.netfilter.runner import Generation

LIBRARY = "libnftables.so.1"
_NFT_CTX_OUTPUT_JSON = 1 << 4

T = TypeVar("T")
ContextKey = tuple[str, int, int]  # (namespace name, st_dev, st_ino)

# NFT_MSG_GETGEN of the nftables netlink subsystem, and its reply's NFTA_GEN_ID attribute.
_NETLINK_NETFILTER = 12
_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
_NEWGEN = (10 << 8) | 15
_NLM_F_REQUEST = 1
_NFTA_GEN_ID = 1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_FD_SETSIZE = 1024  # generation sockets live at or above it (module doc)


class LibraryUnavailable(OSError):
    """libnftables (or libc's setns) cannot be loaded on this machine."""


class _LibNftablesFailure(Exception):
    """What libnftables said, as the original of the translated NftError."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"nft_run_cmd_from_buffer returned {code}: {message}")


class _Library:
    """The ctypes bindings, with argument and return types declared."""

    def __init__(self, name: str) -> None:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            setns_binding()  # checked here: a runner that cannot enter namespaces is unusable
        except (OSError, AttributeError) as exc:
            raise LibraryUnavailable(f"cannot load {name}: {exc}") from exc
        ptr, c_int = ctypes.c_void_p, ctypes.c_int
        lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = ptr, [ctypes.c_uint32]
        lib.nft_ctx_free.restype, lib.nft_ctx_free.argtypes = None, [ptr]
        lib.nft_ctx_buffer_output.restype, lib.nft_ctx_buffer_output.argtypes = c_int, [ptr]
        lib.nft_ctx_buffer_error.restype, lib.nft_ctx_buffer_error.argtypes = c_int, [ptr]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_ctx_output_set_flags.argtypes = [ptr, ctypes.c_uint]
        lib.nft_ctx_set_dry_run.restype, lib.nft_ctx_set_dry_run.argtypes = (
            None,
            [ptr, ctypes.c_bool],
        )
        lib.nft_run_cmd_from_buffer.restype = c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ptr, ctypes.c_char_p]
        for getter in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, getter).restype = ctypes.c_char_p
            getattr(lib, getter).argtypes = [ptr]
        self.lib: Any = lib

    def new_context(self) -> int:
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            raise NftOther("nft_ctx_new failed")
        if self.lib.nft_ctx_buffer_output(ctx) or self.lib.nft_ctx_buffer_error(ctx):
            self.lib.nft_ctx_free(ctx)
            raise NftOther("cannot buffer libnftables output")
        return int(ctx)

    def free_context(self, ctx: int) -> None:
        self.lib.nft_ctx_free(ctx)

    def run(self, ctx: int, commands: str, *, json: bool, dry_run: bool) -> tuple[int, str, str]:
        self.lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON if json else 0)
        self.lib.nft_ctx_set_dry_run(ctx, dry_run)
        code = self.lib.nft_run_cmd_from_buffer(ctx, commands.encode())
        # Reading a buffer also rewinds it, so both are read after every command.
        out = (self.lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return int(code), out, err


class LibNftablesRunner:
    """In-process runner; thread-safe (calls are serialised on one worker thread)."""

    def __init__(
        self,
        *,
        library: str = LIBRARY,
        max_contexts: int = 256,
        netns_dir: Path = NETNS_DIR,
        prune_interval: float = 30.0,
    ) -> None:
        self._library = _Library(library)
        self._max_contexts = max_contexts
        self._netns_dir = netns_dir
        self._prune_interval = prune_interval
        # Worker thread only: contexts in LRU order, and the one key per namespace name.
        self._contexts: OrderedDict[ContextKey, int] = OrderedDict()
        self._keys: dict[str, ContextKey] = {}
        # Worker thread only: each context's serial (generations are told apart by it) and
        # its generation socket (None: generations unknown, never guessed).
        self._serials: dict[ContextKey, int] = {}
        self._gen_sockets: dict[ContextKey, socket.socket | None] = {}
        self._next_serial = 0
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None
        self._home_fd = -1
        self._last_prune = time.monotonic()
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._work, args=(started,), name="cthm-libnftables", daemon=True
        )
        self._thread.start()
        started.result()

    # -- callers' side -------------------------------------------------------------------

    @property
    def worker_native_id(self) -> int | None:
        """The worker's kernel thread id (for /proc/self/task/TID), None once stopped."""
        return self._thread.native_id if self._thread.is_alive() else None

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        check_namespace(namespace)
        return self._call(lambda: self._run_in(namespace, commands, json, dry_run))

    def run_tracked(
        self,
        namespace: str,
        commands: str,
        *,
        json: bool = False,
        unless: Generation | None = None,
    ) -> tuple[Generation | None, Generation | None, str | None]:
        """run(), with the namespace's generation read just before and just after, in the same
        visit: (before, after, output). Nothing is run (output None, after == before) when
        `unless` equals the generation before. A generation is None when it cannot be read.
        Equal before and after: no commit happened around the command (a read saw one state);
        after == before + 1 for a write: its own commit was the only one."""
        check_namespace(namespace)
        return self._call(lambda: self._tracked_in(namespace, commands, json, unless))

    def cached_contexts(self) -> list[ContextKey]:
        """The (name, st_dev, st_ino) of every cached context, least recently used first."""
        return self._call(lambda: list(self._contexts))

    def prune(self) -> list[ContextKey]:
        """Frees contexts whose namespace file is gone or replaced; returns their keys."""
        return self._call(self._prune)

    def close(self) -> None:
        """Frees every context and stops the worker thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _call(self, job: Callable[[], T]) -> T:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("LibNftablesRunner is closed")
            self._queue.put((job, future))
        return future.result()

    # -- worker thread -------------------------------------------------------------------

    def _work(self, started: Future[None]) -> None:
        try:
            self._home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            while (item := self._queue.get()) is not None:
                job, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(job())
                    except BaseException as exc:  # noqa: BLE001 - the caller re-raises it
                        future.set_exception(exc)
        finally:
            for key in list(self._contexts):
                self._free(key)
            os.close(self._home_fd)

    def _run_in(self, namespace: str, commands: str, json: bool, dry_run: bool) -> str:
        def run(ctx: int, key: ContextKey) -> tuple[int, str, str]:
            return self._library.run(ctx, commands, json=json, dry_run=dry_run)

        result = self._inside(namespace, run)
        assert result is not None  # nothing skips it
        return self._checked(namespace, *result)

    def _tracked_in(
        self, namespace: str, commands: str, json: bool, unless: Generation | None
    ) -> tuple[Generation | None, Generation | None, str | None]:
        outcome: list[Generation | None] = []

        def unchanged(key: ContextKey) -> bool:
            # Asked from outside: the socket belongs to the namespace for good.
            if unless is None or key not in self._contexts:
                return False
            outcome.append(self._generation(key))
            return outcome[0] == unless

        def run(ctx: int, key: ContextKey) -> tuple[int, str, str]:
            if not outcome:
                outcome.append(self._generation(key))
            result = self._library.run(ctx, commands, json=json, dry_run=False)
            outcome.append(self._generation(key))
            return result

        result = self._inside(namespace, run, unchanged)
        if result is None:
            return outcome[0], outcome[0], None
        return outcome[0], outcome[1], self._checked(namespace, *result)

    def _inside(
        self,
        namespace: str,
        work: Callable[[int, ContextKey], T],
        skip: Callable[[ContextKey], bool] | None = None,
    ) -> T | None:
        """work(context, key) run inside the namespace, with its cached context; None, without
        entering it, when skip(key) says so."""
        if self._broken is not None:
            raise NftOther(self._broken, namespace=namespace)
        if time.monotonic() - self._last_prune > self._prune_interval:
            self._prune()
        try:
            # Checked (no symlink, not the host's namespace) and entered by this descriptor.
            fd, identity = open_namespace(namespace, self._netns_dir)
        except NamespaceNotFound:
            self._forget(namespace)
            raise
        try:
            key = (namespace, identity.dev, identity.ino)
            self._forget(namespace, keep=key)
            if skip is not None and skip(key):
                self._contexts.move_to_end(key)
                return None
            try:
                enter(fd)
            except OSError as exc:
                if is_permission(exc.errno):  # setns(2) without CAP_SYS_ADMIN: EPERM
                    raise NamespaceNotPermitted(namespace, f"setns: {exc.strerror}") from exc
                raise NamespaceNotFound(namespace, f"cannot enter it: {exc.strerror}") from exc
            try:
                return work(self._context(key), key)
            finally:
                self._go_home()
        finally:
            os.close(fd)

    def _checked(self, namespace: str, code: int, out: str, err: str) -> str:
        if code != 0:
            original = _LibNftablesFailure(code, err)
            raise translate_error(err or f"libnftables returned {code}", namespace=namespace) from (
                original
            )
        return out

    def _context(self, key: ContextKey) -> int:
        """The context for this namespace instance; created here, in it, when not cached."""
        ctx = self._contexts.get(key)
        if ctx is not None:
            self._contexts.move_to_end(key)
            return ctx
        ctx = self._library.new_context()
        self._contexts[key] = ctx
        self._keys[key[0]] = key
        self._next_serial += 1
        self._serials[key] = self._next_serial
        self._gen_sockets[key] = _generation_socket()  # here, inside the namespace
        while len(self._contexts) > self._max_contexts:
            self._free(next(iter(self._contexts)))
        return ctx

    def _go_home(self) -> None:
        try:
            enter(self._home_fd)
        except OSError as exc:
            # The worker is stranded in a router's namespace: refuse all further work rather
            # than create contexts in the wrong place.
            self._broken = f"libnftables worker cannot return to its namespace: {exc}"
            raise NftOther(self._broken) from exc

    def _forget(self, namespace: str, keep: ContextKey | None = None) -> None:
        key = self._keys.get(namespace)
        if key is not None and key != keep:
            self._free(key)

    def _free(self, key: ContextKey) -> None:
        del self._keys[key[0]]
        self._library.free_context(self._contexts.pop(key))
        self._serials.pop(key, None)
        sock = self._gen_sockets.pop(key, None)
        if sock is not None:
            sock.close()

    def _generation(self, key: ContextKey) -> Generation | None:
        """The generation of the key's namespace; None if unknown."""
        sock = self._gen_sockets.get(key)
        if sock is None:
            return None
        try:
            found = _read_generation(sock)
        except OSError:
            found = None
        if found is None:  # not trusted again (a late answer could be taken for the next one)
            self._gen_sockets[key] = None
            sock.close()
            return None
        return Generation(self._serials[key], found)

    def _prune(self) -> list[ContextKey]:
        self._last_prune = time.monotonic()
        stale = []
        for key in list(self._contexts):
            name, dev, ino = key
            try:
                info = os.lstat(self._netns_dir / name)  # a symlink now: not the same inode
            except OSError:
                info = None
            if info is None or (info.st_dev, info.st_ino) != (dev, ino):
                self._free(key)
                stale.append(key)
        return stale


def _generation_socket() -> socket.socket | None:
    """A netfilter netlink socket of the calling thread's network namespace, at a descriptor
    of FD_SETSIZE or above (module doc); None when there is no room there, or no socket."""
    try:
        low = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER
        )
    except OSError:
        return None
    try:
        # Closing the low duplicate releases nothing: the socket lives on at the high one.
        high = fcntl.fcntl(low.fileno(), fcntl.F_DUPFD_CLOEXEC, _FD_SETSIZE)
    except OSError:  # EINVAL/EMFILE: the open-file limit leaves no room above FD_SETSIZE
        return None
    finally:
        low.close()
    sock = socket.socket(fileno=high)
    sock.settimeout(1.0)  # the kernel answers at once; never wait on it for long
    return sock


def _read_generation(sock: socket.socket) -> int | None:
    """The namespace's nftables generation id (NFT_MSG_GETGEN); None on an unexpected answer."""
    # nfgenmsg after the header: family AF_UNSPEC, version NFNETLINK_V0, res_id 0.
    sock.send(_HEADER.pack(_HEADER.size + 4, _GETGEN, _NLM_F_REQUEST, 1, 0) + bytes(4))
    data = sock.recv(4096)
    if len(data) < _HEADER.size + 4:
        return None
    length, kind, _, _, _ = _HEADER.unpack_from(data)
    if kind != _NEWGEN:
        return None
    offset = _HEADER.size + 4
    end = min(length, len(data))
    while offset + 4 <= end:
        size, attribute = struct.unpack_from("=HH", data, offset)
        if size < 4:
            return None
        if attribute & 0x3FFF == _NFTA_GEN_ID and size >= 8:
            value: int = struct.unpack_from("!I", data, offset + 4)[0]
            return value
        offset += (size + 3) & ~3
    return None
