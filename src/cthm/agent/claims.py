"""Which router owns each kernel network namespace, when several names lead to one.

Two routers whose namespace names resolve to the same kernel namespace (a bind mount under
another name) would each rewrite the other's table on every resync, and deleting one would
delete the other's. So one of them keeps the namespace and the others are refused (ERROR,
naming the router that has it): the one registered first (created_at, then id), whatever the
order of reconciles, and so the same after a restart.

The record is in memory: router id -> (namespace name, registration order, the identity its
name resolved to when last looked at). Every check resolves the checked router's name afresh
and re-resolves only the routers recorded with the same identity (a few), not every router. A
router's record is refreshed at each of its reconciles, and the agent records every router
before its first reconcile (`note`), so the first pass after a start decides as later ones do.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cthm.domain import Router
from cthm.netfilter import NETNS_DIR, NamespaceId, UnsafeNamespace, UnsafeValue, namespace_identity

_LATEST = datetime.max  # a router without created_at registers after every one with it


@dataclass(frozen=True, slots=True)
class _Claim:
    namespace: str
    project_id: str
    order: tuple[datetime, str]
    identity: NamespaceId | None


@dataclass(frozen=True, slots=True)
class Holder:
    """The router that keeps a shared kernel namespace."""

    router_id: str
    project_id: str
    namespace: str
    identity: NamespaceId


class NamespaceClaims:
    """Thread-safe: workers check and note concurrently."""

    def __init__(self, netns_dir: Path = NETNS_DIR) -> None:
        self._netns_dir = netns_dir
        self._lock = threading.Lock()
        self._claims: dict[str, _Claim] = {}
        # identity -> the routers recorded with it: a check looks at those, not at every
        # router (a resync of a thousand routers was a million comparisons).
        self._by_identity: dict[NamespaceId, set[str]] = {}
        # name -> the identity namespace_identity last accepted for it (name checked, no
        # symlink, a network namespace, neither the host's nor ours).
        self._accepted: dict[str, NamespaceId] = {}

    def note(self, router: Router) -> NamespaceId | None:
        """Records the router and the kernel namespace its name resolves to now (None: not
        there yet). UnsafeNamespace for a name that leads where cthm never goes."""
        identity: NamespaceId | None = None
        try:
            identity = self._identity(router.namespace)
        finally:
            order = (_naive(router.created_at), router.id)
            with self._lock:
                self._record(
                    router.id, _Claim(router.namespace, router.project_id, order, identity)
                )
        return identity

    def holder(self, router: Router) -> Holder | None:
        """Another router that keeps the kernel namespace `router`'s name resolves to, or None
        when `router` may use it (it keeps it, or nobody else has it, or it is not there yet).
        UnsafeNamespace as `note`."""
        identity = self.note(router)
        if identity is None:
            return None
        mine = self._claims_of(router.id)
        rivals = [c for c in self._sharing(identity, exclude=router.id) if c[1].order < mine.order]
        if not rivals:
            return None
        first_id, first = min(rivals, key=lambda item: item[1].order)
        return Holder(first_id, first.project_id, first.namespace, identity)

    def sharing(self, namespace: str, exclude: str) -> list[str]:
        """Routers (other than `exclude`) whose namespace is the kernel namespace `namespace`
        resolves to now; [] when it is not there. UnsafeNamespace as `note`."""
        identity = self._identity(namespace)
        if identity is None:
            return []
        return sorted(router_id for router_id, _ in self._sharing(identity, exclude=exclude))

    def forget(self, router_id: str) -> None:
        with self._lock:
            claim = self._claims.get(router_id)
            if claim is not None:
                self._accepted.pop(claim.namespace, None)  # bounded by the routers known
            self._record(router_id, None)

    def _record(self, router_id: str, claim: _Claim | None) -> None:
        """Sets (None: removes) the router's claim, and the index by identity; under the lock."""
        old = self._claims.pop(router_id, None)
        if old is not None and old.identity is not None:
            ids = self._by_identity.get(old.identity)
            if ids is not None:
                ids.discard(router_id)
                if not ids:
                    del self._by_identity[old.identity]
        if claim is not None:
            self._claims[router_id] = claim
            if claim.identity is not None:
                self._by_identity.setdefault(claim.identity, set()).add(router_id)

    def _claims_of(self, router_id: str) -> _Claim:
        with self._lock:
            return self._claims[router_id]

    def _sharing(self, identity: NamespaceId, exclude: str) -> list[tuple[str, _Claim]]:
        """Recorded routers with this identity, each re-resolved now (its name may have moved)."""
        with self._lock:
            candidates = [
                (router_id, self._claims[router_id])
                for router_id in self._by_identity.get(identity, ())
                if router_id != exclude
            ]
        found = []
        for router_id, claim in candidates:
            try:
                now = self._identity(claim.namespace)
            except (UnsafeNamespace, UnsafeValue):
                now = None
            with self._lock:
                if self._claims.get(router_id) == claim:
                    self._record(
                        router_id, _Claim(claim.namespace, claim.project_id, claim.order, now)
                    )
            if now == identity:
                found.append((router_id, claim))
        return found

    def _identity(self, namespace: str) -> NamespaceId | None:
        """As namespace_identity, whose full check (two opens, fstat, ioctl, two stats: most of
        a claims check, ~0.1 ms a reconcile) runs again only when the name's file is no longer
        the inode it accepted last: one lstat says so (a symlink or another inode never
        matches). Whether an inode is the host's or ours does not change while it lives; the
        backend checks the namespace in full again at every entry anyway."""
        accepted = self._accepted.get(namespace)  # known: the name passed check_namespace
        if accepted is not None:
            try:
                info = os.lstat(os.path.join(self._netns_dir, namespace))
            except OSError:
                info = None
            if (
                info is not None
                and not stat.S_ISLNK(info.st_mode)
                and info.st_ino == accepted.ino
                and info.st_dev == accepted.dev
            ):
                return accepted
        try:
            identity = namespace_identity(namespace, self._netns_dir)
        except BaseException:
            self._accepted.pop(namespace, None)
            raise
        if identity is None:
            self._accepted.pop(namespace, None)
        else:
            self._accepted[namespace] = identity
        return identity


def kernel_namespace(namespace: str, netns_dir: Path = NETNS_DIR) -> NamespaceId | None:
    """The kernel namespace the name leads to; None when absent or refused (netns.py)."""
    try:
        return namespace_identity(namespace, netns_dir)
    except (UnsafeNamespace, UnsafeValue):
        return None


def _naive(moment: datetime | None) -> datetime:
    """Comparable whatever its tzinfo (the store gives naive UTC, others may give aware)."""
    if moment is None:
        return _LATEST
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None)
