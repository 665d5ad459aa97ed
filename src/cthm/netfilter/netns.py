"""Which kernel network namespace a name under /run/netns is, and opening it safely.

A name is not an identity: a bind mount (or a symlink) gives one kernel namespace several names
under /run/netns. A namespace is identified by the nsfs inode it resolves to when it is opened
(`NamespaceId`: st_dev, st_ino, as `ip netns identify` and /proc/PID/ns/net show it).

`open_namespace` is the one way into a router's namespace, for every path that enters one
(libnftables' setns, the nft/iptables tools, the legacy-table peek, the CLI's reads):
- it never follows a symlink in /run/netns (a symlink can point anywhere, /proc/1/ns/net
  included): the name is opened with O_PATH|O_NOFOLLOW and refused if it is one;
- what it opens must be an nsfs inode of a network namespace (a file that is not one yet, as
  `ip netns add` leaves it for a moment, is "not found"; another kind of namespace is refused);
- it refuses the host's initial network namespace and the process's own (their identities read
  once: neither changes while the process lives);
- callers enter by the descriptor it returns (`enter(fd)`, `nsenter --net=/proc/self/fd/N`), so
  the name cannot be swapped between the check and the entry.
Refusals are `UnsafeNamespace`: permanent until someone changes /run/netns.

`enter` is cthm's one binding of setns(2) (libnftables' worker and `peek` use it); `peek` runs a
read in a short-lived thread inside a namespace, at no process spawn.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cthm.netfilter.errors import NamespaceNotFound, NamespaceNotPermitted, NftError, is_permission
from cthm.netfilter.model import check_namespace

NETNS_DIR = Path("/run/netns")
HOST_NAMESPACE = Path("/proc/1/ns/net")
OWN_NAMESPACE = Path("/proc/self/ns/net")
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs descriptor: the namespace's CLONE_NEW* type
CLONE_NEWNET = 0x40000000
# The kernel's fixed inode number of the initial network namespace (PROC_NET_INIT_INO in
# include/linux/proc_ns.h): the host's namespace is known even where /proc/1/ns is unreadable.
INIT_NET_INO = 0xEFFFFFF9

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NamespaceId:
    """A kernel network namespace: its nsfs inode."""

    dev: int
    ino: int

    def __str__(self) -> str:
        return f"net:[{self.ino}]"


class UnsafeNamespace(NftError):
    """The name leads where cthm must never write (a symlink, the host's or cthm's own network
    namespace, not a network namespace at all). Permanent: retrying changes nothing."""

    def __init__(self, namespace: str, reason: str) -> None:
        super().__init__(f"namespace {namespace} refused: {reason}", namespace=namespace)
        self.reason = reason


def open_namespace(namespace: str, netns_dir: Path = NETNS_DIR) -> tuple[int, NamespaceId]:
    """An O_RDONLY descriptor of the network namespace `netns_dir/namespace` and its identity;
    the caller closes it. NamespaceNotFound when absent (or not a namespace yet), UnsafeNamespace
    when refused, UnsafeValue for an unsafe name."""
    path = netns_dir / check_namespace(namespace)
    try:
        # O_PATH opens nothing (no FIFO blocks, no device acts) and, with O_NOFOLLOW, gives the
        # symlink itself rather than what it points to.
        handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceNotFound(namespace) from None
    except OSError as exc:
        if is_permission(exc.errno):
            raise NamespaceNotPermitted(namespace, f"cannot open it: {exc.strerror}") from exc
        raise NamespaceNotFound(namespace, f"cannot open it: {exc.strerror}") from exc
    try:
        info = os.fstat(handle)
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeNamespace(
                namespace, f"it is a symbolic link (cthm never follows one in {netns_dir})"
            )
        if info.st_dev != _nsfs_dev():
            raise NamespaceNotFound(namespace, "not a network namespace (yet)")
        # Reopened through the descriptor: the very inode just checked, never the name again.
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(handle)
    try:
        identity = NamespaceId(info.st_dev, info.st_ino)
        if fcntl.ioctl(fd, NS_GET_NSTYPE) != CLONE_NEWNET:
            raise UnsafeNamespace(namespace, "not a network namespace")
        _refuse_special(namespace, identity)
    except BaseException:
        os.close(fd)
        raise
    return fd, identity


def namespace_identity(namespace: str, netns_dir: Path = NETNS_DIR) -> NamespaceId | None:
    """The kernel namespace the name resolves to now; None when absent (or not a namespace
    yet). UnsafeNamespace and UnsafeValue as `open_namespace`."""
    try:
        fd, identity = open_namespace(namespace, netns_dir)
    except NamespaceNotFound:
        return None
    os.close(fd)
    return identity


def namespace_path(namespace: str, netns_dir: Path = NETNS_DIR) -> Path:
    """The namespace's file, after checking the name is safe; NamespaceNotFound if absent."""
    path = netns_dir / check_namespace(namespace)
    if not path.exists():
        raise NamespaceNotFound(namespace)
    return path


def enter(fd: int) -> None:
    """Moves the calling thread into the network namespace open as `fd` (setns(2));
    OSError with the errno on failure, AttributeError where libc has no setns."""
    if setns_binding()(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@functools.cache
def setns_binding() -> Callable[[int, int], int]:
    """libc's setns, typed; loaded on first use (importing cthm loads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    setns: Callable[[int, int], int] = libc.setns
    setns.argtypes = [ctypes.c_int, ctypes.c_int]  # type: ignore[attr-defined]
    setns.restype = ctypes.c_int  # type: ignore[attr-defined]
    return setns


def peek(namespace: str, read: Callable[[], T], netns_dir: Path = NETNS_DIR) -> T:
    """`read()` run inside the namespace (opened as `open_namespace` does) by a short-lived
    thread, so nothing is spawned; its exception, if any, is raised here. Raises as
    `open_namespace` too."""
    fd, _ = open_namespace(namespace, netns_dir)  # checked: no symlink, not the host's
    outcome: list[T | BaseException] = []

    def run() -> None:
        try:
            try:
                enter(fd)
            except OSError as exc:
                if is_permission(exc.errno):  # setns(2) without CAP_SYS_ADMIN
                    raise NamespaceNotPermitted(namespace, f"setns: {exc.strerror}") from exc
                raise
            outcome.append(read())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    # The thread ends in the other namespace: it is never reused, so nothing is switched back.
    thread = threading.Thread(target=run, name="cthm-netns-peek", daemon=True)
    try:
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _refuse_special(namespace: str, identity: NamespaceId) -> None:
    if identity.ino == INIT_NET_INO or identity == _special_identity(HOST_NAMESPACE):
        raise UnsafeNamespace(namespace, f"it is the host's initial network namespace ({identity})")
    if identity == _special_identity(OWN_NAMESPACE):
        raise UnsafeNamespace(namespace, f"it is cthm's own network namespace ({identity})")


# The identities of HOST_NAMESPACE and OWN_NAMESPACE, once read. Neither changes during the
# process's life: /proc/1 is the init process, which never changes namespace, and
# /proc/self/ns/net is the namespace of the process's main thread (its thread group leader,
# whichever thread asks), which cthm never moves (only worker and peek threads setns). Read
# once, they cost every entry into a namespace two stat(2)s fewer (each gives the GIL up).
_special: dict[Path, NamespaceId] = {}


def _special_identity(path: Path) -> NamespaceId | None:
    """HOST_NAMESPACE's or OWN_NAMESPACE's identity; a failed read is not kept (read again
    next time, as before), so no check is lost to a passing error."""
    known = _special.get(path)
    if known is None:
        known = _identity_of(path)
        if known is not None:
            _special[path] = known
    return known


def _identity_of(path: Path) -> NamespaceId | None:
    try:
        info = os.stat(path)
    except OSError:  # e.g. /proc/1 not readable in a container: INIT_NET_INO still applies
        return None
    return NamespaceId(info.st_dev, info.st_ino)


@functools.cache
def _nsfs_dev() -> int:
    """The device of nsfs, where every namespace's inode lives (one superblock)."""
    return os.stat(OWN_NAMESPACE).st_dev
