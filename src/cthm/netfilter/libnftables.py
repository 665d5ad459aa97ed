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
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from cthm.netfilter.errors import NamespaceNotFound, NftOther, translate_error
from cthm.netfilter.model import check_namespace
from cthm.netfilter.netns import NETNS_DIR, enter, open_namespace, setns_binding

LIBRARY = "libnftables.so.1"
_NFT_CTX_OUTPUT_JSON = 1 << 4

T = TypeVar("T")
ContextKey = tuple[str, int, int]  # (namespace name, st_dev, st_ino)


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
            try:
                enter(fd)
            except OSError as exc:
                raise NamespaceNotFound(namespace, f"cannot enter it: {exc.strerror}") from exc
            try:
                ctx = self._context(key)
                code, out, err = self._library.run(ctx, commands, json=json, dry_run=dry_run)
            finally:
                self._go_home()
        finally:
            os.close(fd)
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
