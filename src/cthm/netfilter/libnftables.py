"""Running nft text in-process with libnftables, inside any namespace, from one worker thread.

A libnftables context binds its netlink socket to the network namespace its thread is in when
the context is created (measured). So one dedicated worker thread does all the work (and never
two: libnftables is not safe to use from two threads at once even with a context each; tried,
a 1000-router cold sync read back a helper object with another's protocol, and once aborted
the process on an assertion in its JSON output, json.c set_dtype_json): for each
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

Hand-offs (issue 14). Each call handed to the worker wakes two threads through the GIL (~0.2 ms
when others are busy), so a full sync's read, apply and read-back go as one job (`batch`: the
job's own calls run inline on the worker), and a generation is asked from the calling thread
on the namespace's kept socket (`generation`; each kept socket has a lock, held by every use).

The netlink socket that asks is made with the context, in its namespace, and kept with it:
closing a netfilter netlink socket after a commit waits for the kernel's deferred table
destruction (an RCU grace period, ~10 ms, measured), so a socket per call would cost more than
the listing it saves. It is kept at a descriptor above 1023, as libnftables select()s on its
own sockets and glibc aborts the process on a descriptor past FD_SETSIZE; where the open-file
limit leaves no room up there, generations are not read (every read lists, as before).

The context's own socket is the opposite case: libnftables select()s on it when it commits,
so it must stay BELOW FD_SETSIZE, or glibc aborts the whole process ("bit out of range 0 -
FD_SETSIZE"; measured with 1100 descriptors open, as a `cthm serve` with many clients holds).
The runner keeps a few low descriptors in reserve from its start; a context whose socket comes
out at 1024 or above has it moved onto one of them (dup2, and the context's libmnl socket told
its new number); with none left, a cached context is freed to give its own, and with none
cached either the new one is refused with an NftError: never an abort. The socket's number is read
from the context (libnftables' first field, libmnl's first field), trusted only once the
library proved at load that the number there is a netfilter netlink socket; otherwise a
context is only made while a descriptor below FD_SETSIZE is free.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import queue
import random
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from cthm.netfilter.errors import (
    NamespaceNotFound,
    NamespaceNotPermitted,
    NftError,
    NftOther,
    is_permission,
    translate_error,
)
from cthm.netfilter.model import check_namespace
from cthm.netfilter.netns import NETNS_DIR, enter, open_namespace, setns_binding
from cthm.netfilter.runner import Generation
from cthm.netfilter.setread import read_port_set, table_exists

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
_LOW_RESERVE = 8  # low descriptors kept for context sockets (module doc)
# Contexts cached at most. A context that has committed holds ~0.5 MB (measured: RSS per
# context after one apply of a 10-port table, kept until it is freed; libnftables has no call
# to drop it), so 256 is ~170 MB. Each also holds a descriptor below FD_SETSIZE, and when none
# is left a cached context is freed for a new one (never an error while one is cached).
MAX_CONTEXTS = 256


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
        self.socket_layout = self._check_socket_layout()

    def _check_socket_layout(self) -> bool:
        """Whether the socket number read by socket_fd() is really a context's socket: one
        context made and checked (module doc)."""
        try:
            ctx = self.new_context()
        except NftOther:
            return False
        try:
            return self._read_fd(ctx) is not None
        finally:
            self.free_context(ctx)

    @staticmethod
    def _mnl_socket(ctx: int) -> int:
        # struct nft_ctx starts with `struct mnl_socket *nf_sock`; mnl_socket with `int fd`.
        return ctypes.c_void_p.from_address(ctx).value or 0

    def _read_fd(self, ctx: int) -> int | None:
        nl = self._mnl_socket(ctx)
        if not nl:
            return None
        fd = ctypes.c_int.from_address(nl).value
        return fd if _is_netfilter_socket(fd) else None

    def socket_fd(self, ctx: int) -> int | None:
        """The descriptor of the context's netlink socket; None when the layout is unknown."""
        return self._read_fd(ctx) if self.socket_layout else None

    def move_socket(self, ctx: int, fd: int, target: int) -> None:
        """Puts the context's socket at descriptor `target` (replacing what was there, one of
        the runner's placeholders), and closes it at `fd`."""
        os.dup2(fd, target, inheritable=False)
        ctypes.c_int.from_address(self._mnl_socket(ctx)).value = target
        os.close(fd)

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

    def drop_cache(self, ctx: int) -> None:
        """Empties the context's cache of the ruleset (LibNftablesRunner's keep_caches): nft
        releases it after every dry run, and libnftables 1.0.6 has no call for it. An empty
        dry run costs ~20 us and one netlink round trip."""
        self.lib.nft_ctx_set_dry_run(ctx, True)
        self.lib.nft_run_cmd_from_buffer(ctx, b"")
        # Both buffers rewound: the next command's output is its own.
        self.lib.nft_ctx_get_output_buffer(ctx)
        self.lib.nft_ctx_get_error_buffer(ctx)


class LibNftablesRunner:
    """In-process runner; thread-safe (calls are serialised on one worker thread)."""

    def __init__(
        self,
        *,
        library: str = LIBRARY,
        max_contexts: int = MAX_CONTEXTS,
        netns_dir: Path = NETNS_DIR,
        prune_interval: float = 30.0,
        keep_caches: bool = True,
    ) -> None:
        """keep_caches False: a context's cache of its namespace's ruleset (nft's own: ~540 of
        the ~700 KB a context that committed holds, measured) is emptied after each entry into
        the namespace, so many more contexts fit in the same memory (a kernel-worker process,
        sync_processes.py: its full syncs list the table afresh anyway, every commit making
        the cache stale; a partial sync's small transaction would fetch it again)."""
        self._library = _Library(library)
        self._max_contexts = max_contexts
        self._keep_caches = keep_caches
        # Worker thread only: contexts that ran nft since their cache was last emptied.
        self._filled: set[int] = set()
        self._random = random.Random()  # noqa: S311 - eviction victims (_victim), not secrets
        self._netns_dir = netns_dir
        self._prune_interval = prune_interval
        # Worker thread only: contexts in LRU order, and the one key per namespace name.
        self._contexts: OrderedDict[ContextKey, int] = OrderedDict()
        self._keys: dict[str, ContextKey] = {}
        # Worker thread only: each context's serial (generations are told apart by it).
        self._serials: dict[ContextKey, int] = {}
        # Each context's kept socket (None: generations unknown, never guessed). Changed by the
        # worker thread only; generation() reads it from any thread (one dict lookup) and asks
        # on it under its lock.
        self._gen_sockets: dict[ContextKey, _KeptSocket | None] = {}
        self._next_serial = 0
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None
        self._home_fd = -1
        # Worker thread only: placeholder descriptors below FD_SETSIZE for context sockets.
        self._reserve: list[int] = []
        # Worker thread only: the namespace a batch() job is inside (a visit), if any.
        self._visiting: _Visit | None = None
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

    def read_port_set(self, namespace: str, table: str, name: str) -> tuple[int, ...] | None:
        """The ports of inet set `name` of `table` in the namespace, read by netlink on the
        namespace's kept socket, without nft and without entering it (netfilter/setread.py);
        None when it cannot be read so: no context of this namespace instance yet, or a set
        that is not plainly ports (then `list set` tells, as before)."""
        check_namespace(namespace)
        return self._call(lambda: self._read_set_in(namespace, table, name))

    def run_and_read_sets(
        self, namespace: str, commands: str, table: str, names: Sequence[str]
    ) -> list[tuple[int, ...] | None]:
        """run(namespace, commands), then read_port_set() of each of `names`, in one visit of
        the worker (one hand-off, one entry into the namespace, instead of one per call)."""
        check_namespace(namespace)
        return self._call(lambda: self._run_and_read_in(namespace, commands, table, names))

    def table_exists(self, namespace: str, table: str) -> bool | None:
        """Whether inet table `table` exists in the namespace, asked by netlink on the
        namespace's kept socket (NFT_MSG_GETTABLE: a cold sync's read of a router with no
        table yet costs no nft run); the namespace's context is made, as by any call, when
        there is none. None when it cannot be asked so."""
        check_namespace(namespace)
        return self._call(lambda: self._table_in(namespace, table))

    def batch(self, job: Callable[[], T], namespace: str | None = None) -> T:
        """job() run on the worker thread, where this runner's own calls made by it run at
        once, without a hand-off each (a full sync's read, apply and read-back: one hand-off
        instead of three; each hand-off wakes two threads through the GIL, ~0.2 ms, more with
        other threads busy). Exceptions raised in job() reach the caller as they are.

        With `namespace`: one VISIT of it. The namespace is opened, checked and entered once
        for all the job's calls on it (not once per call: ~10 system calls each, every one
        giving the GIL up), and a call's generation `before` is the one read just after the
        previous call of the visit (one NFT_MSG_GETGEN fewer per call). That generation can
        only be older than a fresh read, which makes "no commit in between" and "our commit
        was the only one" rarer, never wrong; a check whether a listing can be skipped
        (`unless`) always reads afresh. When the namespace cannot be opened or entered, the job
        runs without a visit and its calls fail as they would have."""
        if namespace is None:
            return self._call(job)
        check_namespace(namespace)
        return self._call(lambda: self._visit(namespace, job))

    def generation(self, namespace: str) -> Generation | None:
        """The namespace's generation (as run_tracked reads it), asked from the calling
        thread on the kept socket of the namespace's context: no hand-off to the worker and
        no entry into the namespace (a no-op resync's read of an unchanged table). None
        whenever it cannot be asked so (no context of this namespace instance yet, no kept
        socket, the namespace absent or refused): the caller then goes the usual way, which
        tells why."""
        key = self._keys.get(namespace)  # the name was checked when its context was made
        if key is None:  # no context (evicted, say): not worth the checks
            return None
        try:
            # One lstat, not open_namespace's checks: the key's context was made in a checked
            # instance, and its kept socket pins that namespace, so no other namespace can have
            # its nsfs inode while the socket is open; a name that is now a symbolic link or
            # another file lists another device or inode. (Freed meanwhile: its socket is
            # closed, and ask() answers None.)
            info = os.lstat(os.path.join(self._netns_dir, namespace))
        except OSError:
            return None
        if (info.st_dev, info.st_ino) != (key[1], key[2]) or self._broken is not None:
            return None
        kept = self._gen_sockets.get(key)
        found = None if kept is None else kept.ask(_generation_id)
        return None if found is None or kept is None else Generation(kept.serial, found)

    def instance(self, namespace: str) -> tuple[int, int, int] | None:
        """(st_dev, st_ino, context serial) of the namespace instance this runner holds a
        context of (its kept socket pins that instance), or None; from any thread. An equal
        answer later, with the same serial, means the instance was pinned all along."""
        key = self._keys.get(namespace)
        serial = None if key is None else self._serials.get(key)
        return None if key is None or serial is None else (key[1], key[2], serial)

    def watch(self, namespace: str) -> None:
        """Makes a context of the namespace soon, in the worker thread, without waiting for it
        (so that generation() can answer for it later); any failure is left to later calls.
        Only while the cache has room: a context made by freeing another one costs ~0.2 ms of
        this thread's time (and the freed one's next call as much again) for a generation
        that may never be asked (a cold sync of 1000 routers by kernel workers watched ~700 of
        them, ~120 ms of the agent's CPU, each soon freed for the next)."""
        check_namespace(namespace)
        if len(self._contexts) >= self._max_contexts:  # a hint from here; _watch decides
            return
        future: Future[None] = Future()
        with self._lock:
            if not self._closed:
                self._queue.put((lambda: self._watch(namespace), future))

    def _watch(self, namespace: str) -> None:
        if len(self._contexts) >= self._max_contexts:
            return
        with contextlib.suppress(NftError, OSError):  # the namespace's next real call says why
            self._inside(namespace, lambda ctx, key: None, lambda key: key in self._contexts)

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
        if threading.get_ident() == self._thread.ident:
            return job()  # from a batch() job: already on the worker thread
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
        self._refill_reserve()
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
                self._free(key, refill=False)
            for fd in self._reserve:
                os.close(fd)
            self._reserve.clear()
            os.close(self._home_fd)

    def _visit(self, namespace: str, job: Callable[[], T]) -> T:
        """job() with the worker inside the namespace throughout (batch()); nested or failing
        visits run the job as it is."""
        if self._visiting is not None or self._broken is not None:
            return job()
        if time.monotonic() - self._last_prune > self._prune_interval:
            self._prune()  # as every entry into a namespace does (_inside)
        try:
            fd, identity = open_namespace(namespace, self._netns_dir)
        except NftError:
            return job()  # its own calls raise what this found, as without a visit
        try:
            key = (namespace, identity.dev, identity.ino)
            self._forget(namespace, keep=key)
            try:
                enter(fd)
                entered = True
            except OSError:
                entered = False
            if not entered:
                return job()
            self._visiting = _Visit(namespace, key, fd)
            try:
                return job()
            finally:
                self._visiting = None
                self._empty_caches()
                self._go_home()
        finally:
            os.close(fd)

    def _outside_visit(self, visit: _Visit, call: Callable[[], T]) -> T:
        """call() (work on another namespace) made from inside `visit`, which resumes after it:
        its namespace entered again by the descriptor it holds; if that fails, the visit's
        remaining calls open and enter their namespace each, as without a visit."""
        self._visiting = None
        try:
            return call()
        finally:
            try:
                enter(visit.fd)
            except OSError:
                pass  # stays ended: later calls enter on their own
            else:
                self._visiting = visit

    def _run_in(self, namespace: str, commands: str, json: bool, dry_run: bool) -> str:
        def run(ctx: int, key: ContextKey) -> tuple[int, str, str]:
            return self._nft(ctx, commands, json=json, dry_run=dry_run)

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

        # In a visit of this namespace: the generation its previous call left (batch()).
        visit = self._visiting
        if visit is None or visit.namespace != namespace:
            visit = None
        known = None if visit is None else visit.generation

        def run(ctx: int, key: ContextKey) -> tuple[int, str, str]:
            if not outcome:
                outcome.append(self._generation(key) if known is None else known)
            result = self._nft(ctx, commands, json=json, dry_run=False)
            after = self._generation(key)
            outcome.append(after)
            if visit is not None and visit.key == key:
                visit.generation = after
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
        visit = self._visiting
        if visit is not None and visit.namespace == namespace:
            # Inside it already (batch()): the instance opened, checked and entered there.
            visit.generation = None  # unknown after any call but a tracked run's (it sets it)
            if skip is not None and skip(visit.key):
                self._contexts.move_to_end(visit.key)
                return None
            return work(self._context(visit.key), visit.key)
        if visit is not None:
            # Another namespace from inside a visit: home first, back in afterwards.
            return self._outside_visit(visit, lambda: self._inside(namespace, work, skip))
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
                self._empty_caches()
                self._go_home()
        finally:
            os.close(fd)

    def _nft(self, ctx: int, commands: str, *, json: bool, dry_run: bool) -> tuple[int, str, str]:
        """libnftables' run in the context (the worker thread, inside its namespace)."""
        if not self._keep_caches:
            self._filled.add(ctx)
        return self._library.run(ctx, commands, json=json, dry_run=dry_run)

    def _empty_caches(self) -> None:
        """With keep_caches False: the nft cache of every context that ran since, emptied."""
        while self._filled:
            self._library.drop_cache(self._filled.pop())

    def _read_set_in(self, namespace: str, table: str, name: str) -> tuple[int, ...] | None:
        if self._broken is not None:
            raise NftOther(self._broken, namespace=namespace)
        try:
            fd, identity = open_namespace(namespace, self._netns_dir)  # this instance, checked
        except NamespaceNotFound:
            self._forget(namespace)
            raise
        os.close(fd)
        key = (namespace, identity.dev, identity.ino)
        if self._keys.get(namespace) != key:
            return None  # nft decides (and makes the context)
        self._contexts.move_to_end(key)
        return self._on_socket(key, lambda sock: read_port_set(sock, table, name))

    def _run_and_read_in(
        self, namespace: str, commands: str, table: str, names: Sequence[str]
    ) -> list[tuple[int, ...] | None]:
        def work(
            ctx: int, key: ContextKey
        ) -> tuple[tuple[int, str, str], list[tuple[int, ...] | None]]:
            result = self._nft(ctx, commands, json=False, dry_run=False)
            if result[0] != 0:
                return result, []

            def reader(name: str) -> Callable[[socket.socket], tuple[int, ...] | None]:
                return lambda sock: read_port_set(sock, table, name)

            return result, [self._on_socket(key, reader(name)) for name in names]

        done = self._inside(namespace, work)
        assert done is not None  # nothing skips it
        self._checked(namespace, *done[0])
        return done[1]

    def _table_in(self, namespace: str, table: str) -> bool | None:
        answer: list[bool | None] = []

        def cached(key: ContextKey) -> bool:
            # The socket belongs to the namespace for good: asked from outside it.
            if key not in self._contexts:
                return False
            answer.append(self._on_socket(key, lambda sock: table_exists(sock, table)))
            return True

        def made(ctx: int, key: ContextKey) -> bool | None:
            return self._on_socket(key, lambda sock: table_exists(sock, table))

        found = self._inside(namespace, made, cached)
        return answer[0] if answer else found

    def _on_socket(self, key: ContextKey, ask: Callable[[socket.socket], T]) -> T | None:
        """ask(the key's kept netlink socket); None when there is none or it failed."""
        kept = self._gen_sockets.get(key)
        return None if kept is None else kept.ask(ask)

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
        # Evicted first: the descriptor its socket frees is the one the new socket takes.
        while len(self._contexts) >= self._max_contexts:
            self._free(self._victim())
        ctx = self._new_context()
        self._contexts[key] = ctx
        self._keys[key[0]] = key
        self._next_serial += 1
        self._serials[key] = self._next_serial
        sock = _generation_socket()  # here, inside the namespace
        self._gen_sockets[key] = None if sock is None else _KeptSocket(self._next_serial, sock)
        return ctx

    def _victim(self) -> ContextKey:
        """The context to free for a new one: a random one. The least recently used would be
        the worst choice for the agent's own pattern: a full resync visits every router in
        turn, and with more routers than contexts, LRU frees exactly the context needed next
        (every visit a new context, ~0.3 ms: measured with 1000 routers); a random victim
        keeps most of them, and a router changed often is made again at once if it was hit."""
        return self._random.choice(list(self._contexts))

    def _new_context(self) -> int:
        """A context whose socket is below FD_SETSIZE (module doc), or NftOther."""
        known = self._library.socket_layout
        if not known and _lowest_free() >= _FD_SETSIZE and self._reserve:
            os.close(self._reserve.pop())  # the socket takes the lowest free descriptor
        ctx = self._library.new_context()
        fd = self._library.socket_fd(ctx)
        if fd is None and known:
            self._library.free_context(ctx)
            raise NftOther("libnftables context has no netlink socket")
        if fd is not None and fd >= _FD_SETSIZE:
            if not self._reserve:
                self._refill_reserve()
            while not self._reserve and self._contexts:
                # No low descriptor free: a cached context gives its own back (_free takes it
                # into the reserve), so the contexts are bounded by the low descriptors too.
                self._free(self._victim())
            if not self._reserve:
                self._library.free_context(ctx)
                raise NftOther(
                    f"no descriptor below {_FD_SETSIZE} is free for a libnftables context "
                    "(libnftables cannot use a higher one)"
                )
            self._library.move_socket(ctx, fd, self._reserve.pop())
        return ctx

    def _refill_reserve(self) -> None:
        """Takes free descriptors below FD_SETSIZE into the reserve, up to its size."""
        while len(self._reserve) < _LOW_RESERVE:
            try:
                fd = fcntl.fcntl(self._home_fd, fcntl.F_DUPFD_CLOEXEC, 0)
            except OSError:
                return
            if fd >= _FD_SETSIZE:
                os.close(fd)
                return
            self._reserve.append(fd)

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

    def _free(self, key: ContextKey, *, refill: bool = True) -> None:
        del self._keys[key[0]]
        ctx = self._contexts.pop(key)
        self._filled.discard(ctx)  # never touched once freed
        self._library.free_context(ctx)
        self._serials.pop(key, None)
        kept = self._gen_sockets.pop(key, None)
        if kept is not None:
            kept.close()
        if refill and len(self._reserve) < _LOW_RESERVE:
            self._refill_reserve()  # the low descriptor just freed, before anyone takes it

    def _generation(self, key: ContextKey) -> Generation | None:
        """The generation of the key's namespace; None if unknown."""
        kept = self._gen_sockets.get(key)
        found = None if kept is None else kept.ask(_generation_id)
        return None if found is None else Generation(self._serials[key], found)

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


class _Visit:
    """A batch() job's stay inside one namespace: its name, its context key (the instance
    opened and checked), the descriptor entered (held open: the instance cannot go away), and
    the generation read after the visit's last call (None: read afresh)."""

    __slots__ = ("fd", "generation", "key", "namespace")

    def __init__(self, namespace: str, key: ContextKey, fd: int) -> None:
        self.namespace = namespace
        self.key = key
        self.fd = fd
        self.generation: Generation | None = None


class _KeptSocket:
    """A context's kept netlink socket, with its context's serial and the lock every use of
    it holds: one request and its answer at a time, whichever thread asks (generation()), and
    never a send on a descriptor closed (and maybe reused) meanwhile."""

    __slots__ = ("_lock", "_sock", "serial")

    def __init__(self, serial: int, sock: socket.socket) -> None:
        self.serial = serial
        self._sock: socket.socket | None = sock
        self._lock = threading.Lock()

    def ask(self, question: Callable[[socket.socket], T]) -> T | None:
        """question(socket); None when closed or when it failed. A failure (OSError: out of
        step, timed out, an unexpected answer) closes it for good: a late answer could be
        taken for the next question's."""
        with self._lock:
            if self._sock is None:
                return None
            try:
                return question(self._sock)
            except OSError:
                self._sock.close()
                self._sock = None
                return None

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _lowest_free() -> int:
    """The lowest free descriptor now (what the next socket() would get)."""
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    return fd


def _is_netfilter_socket(fd: int) -> bool:
    """Whether descriptor `fd` is a netfilter netlink socket (libnftables' kind)."""
    try:
        sock = socket.socket(fileno=fd)  # asks the kernel for its family and protocol
    except OSError:
        return False
    try:
        return sock.family == socket.AF_NETLINK and sock.proto == _NETLINK_NETFILTER
    finally:
        sock.detach()  # not ours to close


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


def _generation_id(sock: socket.socket) -> int:
    """_read_generation(); an unexpected answer is an OSError (the socket is out of step)."""
    found = _read_generation(sock)
    if found is None:
        raise OSError("unexpected answer to NFT_MSG_GETGEN")
    return found


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
