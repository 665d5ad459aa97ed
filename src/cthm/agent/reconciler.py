"""reconcile(router_id): make one router's kernel table equal its desired state, then verify.

There are no create/update/delete paths: every call re-reads desired and kernel state and
enforces the whole of it (Kubernetes controller style). Nothing is written when they agree.

Shadowed bindings: other software's `-j CT` rules in the namespace's raw tables (Neutron's
leftovers) may give a binding's connections another helper, or none, before cthm's rule runs.
Reading those tables costs an `iptables-save` per flavour and family, so they are read only when
the periodic resync asks (`check_shadows`), or the first time a router has bindings; every
reconcile judges its bindings against the tables last read. A shadowed binding stays ACTIVE
(cthm's own rule is in the kernel and verified) with a status_reason naming the rule; the
reason goes when a later read finds the rule gone.

Full and partial syncs (issue 14, kube-proxy's nftables proxier does the same). A FULL sync
reads the whole table, compares it with the desired one and, if they differ, replaces the table
in one transaction and reads it all back. It is done the first time this process looks at a
router, after any failure of it, after drift, on the periodic resync (KernelStateBook.need_full)
and whenever a partial sync cannot be done or does not verify. Otherwise a PARTIAL sync starts
from the table last verified (kept in the book): nothing is read first; the backend's update()
writes only the element changes, reads back the sets it touched and the result must equal the
desired table, else a full sync follows in the same call. A desired table equal to the one last
verified writes and reads nothing (sync "none").

Desired state: a full sync reads it afresh (load(), or the resync's load_all() of every router
at once); a partial one asks the source to reload() from the router's last desired state, which
reuses the rows the store says are unchanged (measured: a fresh read of 1000 bindings costs
~5 ms, the router row ~0.3 ms). The last desired state of each router and what was derived
from it (refused bindings, assignments, desired table) are kept here: identical bindings (the
source gave back the same tuple) reuse them, a few changed ones are edited into the last
assignments (rebuilding 1000 costs ~1 ms; when the reload says which it read again, its
BindingEdit, only those are looked at and checked against the catalog and capabilities, the
others were when last derived); a full sync asks the catalog and capabilities again, and
derives everything again unless they refuse what they refused and the bindings are equal to
the last ones (a no-op resync). A resync's preloaded state is not used for a router whose
change was announced (Agent.enqueue) after the read began.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from cthm.agent.capabilities import HelperCapabilities
from cthm.agent.claims import NamespaceClaims
from cthm.agent.kernel_state import KernelStateBook, VerifiedTable, describe_difference
from cthm.agent.ports import (
    BindingEdit,
    BindingReport,
    DesiredRouter,
    DesiredStateSource,
    InvalidDesiredState,
    KernelBackend,
    KernelState,
    RouterReport,
)
from cthm.domain import (
    Assignment,
    Direction,
    HelperBinding,
    HelperCatalog,
    InvalidInput,
    Protocol,
    Router,
    ShadowedBinding,
    Status,
    restore_binding_fields,
    validate_status_reason,
)
from cthm.netfilter import (
    NamespaceNotFound,
    NamespaceNotPermitted,
    NftError,
    RawTable,
    Shadow,
    UnsafeNamespace,
    find_shadows,
)

log = logging.getLogger(__name__)


class Action(StrEnum):
    NOOP = "noop"  # kernel already matched
    APPLIED = "applied"  # one transaction written and verified
    REMOVED = "removed"  # deleted router: its table is gone
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    router_id: str
    action: Action
    reason: str = ""
    retry: bool = False
    missing_namespace: str | None = None
    drift: bool = False  # the kernel had changed behind cthm's back since it was verified
    # Routers to reconcile next: they share the deleted router's kernel namespace.
    requeue: tuple[str, ...] = ()
    # How the kernel was synced: "full" (whole table read, replaced if it differed), "partial"
    # (element changes to the table last verified) or "none" (nothing read or written).
    sync: str = "none"


class VerificationFailed(Exception):
    """The kernel did not hold what was just applied."""


# namespace -> its raw tables (netfilter.read_raw_tables)
RawTableReader = Callable[[str], Sequence[RawTable]]


@dataclass(frozen=True, slots=True)
class _Derived:
    """What one desired state renders to; reused while the source gives back the same bindings
    and no full sync is due (a full sync asks the capabilities again)."""

    desired: DesiredRouter
    refused: dict[str, str]
    usable: list[HelperBinding]
    assignments: list[Assignment]
    want: KernelState | None
    # Binding id -> (its revision, its assignment) while bindings and assignments are one to
    # one (no two bindings merge, none is left out by the catalog): lets the next partial sync
    # edit `assignments` instead of rebuilding them. None: rebuilt.
    by_binding: dict[str, tuple[int, Assignment]] | None = None


@dataclass(frozen=True, slots=True)
class _Preloaded:
    """A router's desired state read by load_all(); used only if no change of the router was
    announced since the read began (`sequence`)."""

    sequence: int
    desired: DesiredRouter | InvalidDesiredState | None


@dataclass(frozen=True, slots=True)
class _RawSeen:
    namespace: str
    tables: tuple[RawTable, ...]
    at: datetime


class Reconciler:
    def __init__(
        self,
        source: DesiredStateSource,
        backend: KernelBackend,
        catalog: HelperCatalog,
        capabilities: HelperCapabilities,
        book: KernelStateBook | None = None,
        retired: Sequence[KernelBackend] = (),
        raw_tables: RawTableReader | None = None,
        claims: NamespaceClaims | None = None,
    ) -> None:
        """raw_tables: reads a namespace's iptables raw tables, to find bindings other rules
        shadow (None: not looked for). claims: which router keeps a kernel namespace that
        several routers' names lead to (agent/claims.py)."""
        self._source = source
        self._backend = backend
        self._catalog = catalog
        self._capabilities = capabilities
        self.book = book if book is not None else KernelStateBook()
        # Backends this node used before (nftables <-> iptables): their rules are removed once
        # ours are verified, so switching a node's backend migrates its routers.
        self._retired = tuple(retired)
        self._migration_checked: set[str] = set()
        self._raw_tables = raw_tables
        self._raw_lock = threading.Lock()
        self._raw_seen: dict[str, _RawSeen] = {}
        self._raw_due: set[str] = set()
        self.claims = claims if claims is not None else NamespaceClaims()
        # Desired state per router (module doc): the last one and what it rendered to, the
        # resync's preloaded reads, and when each router's last change was announced.
        self._cache_lock = threading.Lock()
        self._derived: dict[str, _Derived] = {}
        self._preloaded: dict[str, _Preloaded] = {}
        self._announced: dict[str, int] = {}
        self._sequence = 0

    def check_shadows(self, router_ids: Iterable[str]) -> None:
        """The next reconcile of each router reads its namespace's raw tables again."""
        with self._raw_lock:
            self._raw_due.update(router_ids)

    def announce(self, router_ids: Iterable[str]) -> None:
        """A change of these routers was committed: desired state preloaded before it is stale."""
        with self._cache_lock:
            self._sequence += 1
            for router_id in router_ids:
                self._announced[router_id] = self._sequence
                self._preloaded.pop(router_id, None)

    def sequence(self) -> int:
        """Taken before a load_all() begins, then given to preload(): a change announced after
        it is not taken from that read."""
        with self._cache_lock:
            return self._sequence

    def preload(
        self, states: Mapping[str, DesiredRouter | InvalidDesiredState], sequence: int
    ) -> None:
        """Desired states read at once (DesiredStateSource.load_all) for the next reconcile of
        each router, instead of a load() each."""
        with self._cache_lock:
            for router_id, desired in states.items():
                if self._announced.get(router_id, 0) <= sequence:
                    self._preloaded[router_id] = _Preloaded(sequence, desired)

    def reconcile(self, router_id: str) -> ReconcileResult:
        try:
            desired = self._desired(router_id)
        except InvalidDesiredState as exc:
            self._forget_desired(router_id)
            return self._refuse(exc)
        if desired is None:
            self._forget_desired(router_id)
            return self._remove(router_id)
        namespace = desired.router.namespace
        revision = desired.router.revision_number
        unusable = self._unusable_namespace(desired)
        if unusable is not None:
            self._forget_desired(router_id)
            return self._refuse_namespace(desired, unusable)
        kernel_read = False  # whether this call read the kernel (else its state is unknown)
        drift = False
        sync = "none"
        try:
            verified = self.book.verified_table(router_id, namespace)
            derived = self._derive(desired, reuse=verified is not None)
            refused, usable, assignments, want = (
                derived.refused,
                derived.usable,
                derived.assignments,
                derived.want,
            )
            action = Action.NOOP
            if verified is not None and want == verified.table:
                # The table last verified is the one wanted: nothing to read or write.
                self.book.unchanged(router_id, revision)
            else:
                if verified is not None:
                    sync = "partial"  # what a failure below is reported as
                    if self._partial(router_id, namespace, revision, verified, assignments, want):
                        action = Action.APPLIED
                if action is Action.NOOP:
                    sync = "full"
                    action, drift = self._full(router_id, namespace, revision, assignments, want)
                    kernel_read = True
        except NamespaceNotFound:
            reason = f"namespace {namespace} not found"
            self._forget_desired(router_id)
            self.book.failed(router_id, reason, namespace=namespace, namespace_missing=True)
            self._report(desired, Status.ERROR, reason, {b.id: reason for b in desired.bindings})
            return ReconcileResult(
                router_id,
                Action.FAILED,
                reason,
                retry=True,
                missing_namespace=namespace,
                drift=drift,
                sync=sync,
            )
        except UnsafeNamespace as exc:  # the name was changed since the check above
            self._forget_desired(router_id)
            return self._refuse_namespace(desired, exc.message)
        except NamespaceNotPermitted as exc:  # not the kernel's refusal: this process's
            self._forget_desired(router_id)
            reason = exc.message
            self.book.failed(router_id, reason, namespace=namespace, kernel_unknown=True)
            self._report(desired, Status.ERROR, reason, {b.id: reason for b in desired.bindings})
            return ReconcileResult(
                router_id, Action.FAILED, reason, retry=True, drift=drift, sync=sync
            )
        except (NftError, VerificationFailed) as exc:
            self._forget_desired(router_id)
            self._capabilities.invalidate()  # a helper may have gone; probe again next time
            reason = f"kernel refused the change: {_message(exc)}"
            log.warning("router %s: %s", router_id, reason)
            self.book.failed(router_id, reason, namespace=namespace, kernel_unknown=not kernel_read)
            self._report(desired, Status.ERROR, reason, {b.id: reason for b in desired.bindings})
            return ReconcileResult(
                router_id, Action.FAILED, reason, retry=True, drift=drift, sync=sync
            )

        rewrote = action is Action.APPLIED and sync == "full"
        if self._retired and (rewrote or router_id not in self._migration_checked):
            # Once per router per run, and after each table rewrite: never on a no-op resync,
            # nor on a partial sync (its element changes bring no retired rules back).
            self._migration_checked.add(router_id)
            if self._remove_retired(router_id, namespace):
                action = Action.APPLIED
        summary = ""
        failed = len(refused) + len(desired.rejected)
        if failed:
            total = len(desired.bindings) + len(desired.rejected)
            summary = f"{failed} of {total} bindings could not be applied"
        notes = self._shadowed(router_id, namespace, usable, assignments)
        reported = self._report(desired, Status.ACTIVE, summary, refused, notes)
        if sync != "none":
            derived = self._as_verified(router_id, namespace, derived)
        self._remember(derived, reported)
        if action is Action.APPLIED:
            log.info("router %s: applied %d assignments (%s)", router_id, len(assignments), sync)
        return ReconcileResult(router_id, action, summary, drift=drift, sync=sync)

    def _full(
        self,
        router_id: str,
        namespace: str,
        revision: int,
        assignments: Sequence[Assignment],
        want: KernelState | None,
    ) -> tuple[Action, bool]:
        """Reads the whole table; replaces it if it differs, then reads it all back.
        (action, drift)."""
        action = Action.NOOP
        sync = getattr(self._backend, "sync", None)
        if callable(sync):
            # The backend's read, apply-if-different and read-back in one call (one hand-off
            # to the libnftables thread instead of three: NftablesBackend.sync); the book is
            # told the same, after it.
            have, after = sync(namespace, assignments, want)
            return self._synced(router_id, namespace, revision, want, have, after)
        have = self._backend.read(namespace)
        matches = have == want  # compared once: a thousand assignments a side
        # Asked before observed(): a mismatch makes the book forget the verification.
        drift = not matches and self.book.is_drift(router_id, namespace, revision, want)
        if not self.book.observed(router_id, namespace, revision, want, have, matches=matches):
            if drift:
                self.book.drift_detected(router_id)
                log.warning(
                    "router %s: drift in namespace %s (changed behind cthm's back): %s; repairing",
                    router_id,
                    namespace,
                    describe_difference(want, have),
                )
            self._backend.apply(namespace, assignments)
            action = Action.APPLIED
            have = self._backend.read(namespace)
            if not self.book.observed(router_id, namespace, revision, want, have):
                raise VerificationFailed(
                    f"kernel table differs from what was applied (garbage: "
                    f"{', '.join(getattr(have, 'garbage', ())) or 'none'})"
                )
        return action, drift

    def _synced(
        self,
        router_id: str,
        namespace: str,
        revision: int,
        want: KernelState | None,
        have: KernelState | None,
        after: KernelState | None,
    ) -> tuple[Action, bool]:
        """_full()'s book-keeping for a backend's sync(): `have` read first, `after` read back
        after its apply (None: `have` matched, nothing applied)."""
        matches = after is None
        drift = not matches and self.book.is_drift(router_id, namespace, revision, want)
        if self.book.observed(router_id, namespace, revision, want, have, matches=matches):
            return Action.NOOP, drift
        if drift:
            self.book.drift_detected(router_id)
            log.warning(
                "router %s: drift in namespace %s (changed behind cthm's back): %s; repaired",
                router_id,
                namespace,
                describe_difference(want, have),
            )
        if not self.book.observed(router_id, namespace, revision, want, after):
            raise VerificationFailed(
                f"kernel table differs from what was applied (garbage: "
                f"{', '.join(getattr(after, 'garbage', ())) or 'none'})"
            )
        return Action.APPLIED, drift

    def _partial(
        self,
        router_id: str,
        namespace: str,
        revision: int,
        verified: VerifiedTable,
        assignments: Sequence[Assignment],
        want: KernelState | None,
    ) -> bool:
        """Element changes to the table last verified, checked by reading back what they
        touched; False (a full sync must follow) when the backend cannot express the change,
        refuses it or the read-back differs."""
        try:
            have = self._backend.update(namespace, verified.table, assignments)
        except (NamespaceNotFound, UnsafeNamespace):
            raise
        except NftError as exc:  # one transaction: the kernel is unchanged; full sync repairs
            log.info("router %s: partial sync refused (%s); full sync", router_id, _message(exc))
            return False
        if have is None:
            return False
        if have != want:
            log.info(
                "router %s: partial sync did not verify (%s); full sync",
                router_id,
                describe_difference(want, have),
            )
            return False
        self.book.observed(router_id, namespace, revision, want, have, matches=True, full=False)
        return True

    def _desired(self, router_id: str) -> DesiredRouter | None:
        """Preloaded by a resync, else reloaded from the last desired state while partial syncs
        go on, else read afresh (every full sync but the resync's)."""
        with self._cache_lock:
            preloaded = self._preloaded.pop(router_id, None)
            last = self._derived.get(router_id)
        if preloaded is not None:
            if isinstance(preloaded.desired, InvalidDesiredState):
                raise preloaded.desired
            return preloaded.desired
        if last is not None:
            namespace = last.desired.router.namespace
            if self.book.verified_table(router_id, namespace) is not None:
                return self._source.reload(router_id, last.desired)
        return self._source.load(router_id)

    def _derive(self, desired: DesiredRouter, *, reuse: bool) -> _Derived:
        """What the desired state renders to. reuse: the last result, if the source gave back
        the same bindings (a full sync asks the catalog and capabilities again)."""
        with self._cache_lock:
            last = self._derived.get(desired.router.id)
        if (
            reuse
            and last is not None
            and last.desired.bindings is desired.bindings
            and last.desired.rejected == desired.rejected
        ):
            return replace(last, desired=desired)
        edited = None
        edit = desired.edit
        if (
            reuse
            and edit is not None
            and last is not None
            and edit.base is last.desired.bindings
            and last.by_binding is not None
            and not last.refused
            and not desired.rejected
            and not self._refused_bindings(DesiredRouter(desired.router, edit.fresh))
        ):
            # A partial sync's few changes (the source's edit of the last state): only the
            # bindings read again are checked and edited in, not all of them (~0.1 ms at 1000).
            # The others were checked when last derived; a full sync checks them all again.
            usable = list(desired.bindings)
            edited = _edited_assignments(
                self._catalog, last.assignments, last.by_binding, usable, changes=edit
            )
            if edited is not None:
                return self._edited(desired, {}, usable, edited, last)
        refused = self._refused_bindings(desired)
        if (
            not reuse  # (reused above: a reload gives back the same tuple when unchanged)
            and last is not None
            and refused == last.refused
            and last.desired.rejected == desired.rejected
            and last.desired.bindings == desired.bindings
        ):
            # A full sync of unchanged bindings (every router of a no-op resync, read afresh):
            # the catalog and capabilities were asked again just above and refuse the same, so
            # they render to the same assignments and table (~0.1 ms a router of 10 saved).
            return replace(last, desired=desired)
        usable = (
            [b for b in desired.bindings if b.id not in refused]
            if refused
            else list(desired.bindings)
        )
        edited = None
        if reuse and last is not None and last.by_binding is not None:
            edited = _edited_assignments(self._catalog, last.assignments, last.by_binding, usable)
        if edited is not None:
            return self._edited(desired, refused, usable, edited, last)
        assignments, by_binding = _assignments_by_binding(self._catalog, usable)
        want = self._backend.desired(assignments)
        return _Derived(desired, refused, usable, assignments, want, by_binding)

    def _edited(
        self,
        desired: DesiredRouter,
        refused: dict[str, str],
        usable: list[HelperBinding],
        edited: tuple[list[Assignment], dict[str, tuple[int, Assignment]], list[Assignment]],
        last: _Derived | None,
    ) -> _Derived:
        assignments, by_binding, added = edited
        # The backend's desired table edited from the last one (checking only what was added)
        # where it can (NftablesBackend.desired_after; ~0.4 ms less at 1000 assignments).
        desired_after = getattr(self._backend, "desired_after", None)
        if last is not None and last.want is not None and callable(desired_after):
            want = desired_after(last.want, assignments, added)
        else:
            want = self._backend.desired(assignments)
        return _Derived(desired, refused, usable, assignments, want, by_binding)

    def _remember(self, derived: _Derived, reported: Sequence[BindingReport]) -> None:
        """Keeps the desired state as the store holds it after the report (so the next reload
        does not take the bindings just reported for changed ones)."""
        desired = derived.desired
        if desired.edit is not None:  # it holds the tuple before: not kept beyond this call
            desired = replace(desired, edit=None)
        if reported and len(reported) == len(desired.bindings) + len(desired.rejected):
            # Every binding reported (a cold sync): _report() gives them in the bindings' order,
            # then the rejected rows, so they pair up without an index by id.
            desired = replace(
                desired, bindings=tuple(map(_with_status, desired.bindings, reported))
            )
        elif reported:
            written = {r.binding_id: r for r in reported}
            desired = replace(
                desired,
                bindings=tuple(
                    [
                        b if b.id not in written else _with_status(b, written[b.id])
                        for b in desired.bindings
                    ]
                ),
            )
        with self._cache_lock:
            self._derived[desired.router.id] = replace(derived, desired=desired)

    def _as_verified(self, router_id: str, namespace: str, derived: _Derived) -> _Derived:
        """`derived` with the kernel's verified table as its desired table (equal to it, as
        just verified) and its assignments: the next reconcile compares the thousand values
        the two share by identity instead of field by field (measured: ~1 ms a comparison)."""
        verified = self.book.verified_table(router_id, namespace)
        if verified is None:
            return derived
        held = verified.table.assignments
        want = derived.want
        # The book verified `table == want` for this very `want`; and `want`'s assignments are
        # derived's own objects (compared by identity, µs): then `held` equals them without
        # a thousand field-by-field comparisons (~0.5 ms a router of 1000 in a cold sync).
        proven = (
            verified.want is want
            and want is not None
            and getattr(want, "assignments", None) == tuple(derived.assignments)
        )
        # Else compared: cheap when they already share their values (partial syncs).
        if not proven and held != tuple(derived.assignments):
            return derived  # a backend that reads them back otherwise (another order)
        return replace(derived, assignments=list(held), want=verified.table)

    def _forget_desired(self, router_id: str) -> None:
        with self._cache_lock:
            self._derived.pop(router_id, None)

    def _shadowed(
        self,
        router_id: str,
        namespace: str,
        bindings: Sequence[HelperBinding],
        assignments: Sequence[Assignment],
    ) -> dict[str, str]:
        """The applied bindings other rules' `-j CT` shadow, with their status reason (also
        recorded in the book for kernel_state); raw tables read only when due (module doc)."""
        if self._raw_tables is None:
            return {}
        with self._raw_lock:
            due = router_id in self._raw_due
            self._raw_due.discard(router_id)
            seen = self._raw_seen.get(router_id)
        if due or seen is None or seen.namespace != namespace:
            seen = self._read_raw(router_id, namespace, seen) if assignments else None
            with self._raw_lock:
                if seen is None:  # no bindings: read when there are some
                    self._raw_seen.pop(router_id, None)
                else:
                    self._raw_seen[router_id] = seen
        shadows = find_shadows(assignments, seen.tables) if seen is not None else []
        by_key = {(b.protocol, b.port, b.direction): b for b in bindings}
        found = []
        for shadow in shadows:
            a = shadow.assignment
            binding = by_key.get((a.protocol, a.port, a.direction))
            if binding is not None:
                found.append(_shadowed_binding(binding, shadow))
        # Several rules may shadow one binding: the first (sorted) names it.
        notes: dict[str, str] = {}
        for item in found:
            notes.setdefault(item.binding_id, item.reason)
        self.book.shadows(router_id, tuple(found), seen.at if seen is not None else None)
        return notes

    def _read_raw(self, router_id: str, namespace: str, seen: _RawSeen | None) -> _RawSeen:
        """The namespace's raw tables now; on failure, what was read before (if any)."""
        assert self._raw_tables is not None
        try:
            return _RawSeen(namespace, tuple(self._raw_tables(namespace)), datetime.now(UTC))
        except (NftError, OSError) as exc:
            log.warning(
                "router %s: cannot read the raw tables of %s for shadowing rules: %s",
                router_id,
                namespace,
                _message(exc),
            )
            if seen is not None and seen.namespace == namespace:
                return seen
            return _RawSeen(namespace, (), datetime.now(UTC))

    def _refused_bindings(self, desired: DesiredRouter) -> dict[str, str]:
        """Bindings that cannot be in the kernel, with the reason a person can act on."""
        # Resolved once per distinct (helper, protocol): a router may hold thousands of bindings.
        kernel_kind: dict[tuple[str, Protocol], tuple[str, Protocol] | str] = {}
        for kind in {(b.helper, b.protocol) for b in desired.bindings}:
            try:
                kernel_kind[kind] = (self._catalog.resolve(*kind).name, kind[1])
            except InvalidInput as exc:
                kernel_kind[kind] = f"no longer allowed: {exc.reason}"
        lacking = self._capabilities.unavailable(
            desired.router.namespace, {k for k in kernel_kind.values() if isinstance(k, tuple)}
        )
        problem: dict[tuple[str, Protocol], str] = {}
        for kind, resolved in kernel_kind.items():
            if isinstance(resolved, str):
                problem[kind] = resolved
            elif resolved in lacking:
                problem[kind] = f"helper {resolved[0]} not available in this kernel"
        if not problem:
            return {}
        return {
            b.id: problem[(b.helper, b.protocol)]
            for b in desired.bindings
            if (b.helper, b.protocol) in problem
        }

    def _unusable_namespace(self, desired: DesiredRouter) -> str | None:
        """Why the router's namespace must not be touched on its behalf, or None: a symlink,
        the host's or the agent's own namespace, or one another router keeps (claims.py)."""
        router = desired.router
        try:
            holder = self.claims.holder(router)
        except UnsafeNamespace as exc:
            return exc.message
        if holder is None:
            return None
        if holder.project_id != router.project_id:
            # The reason is shown to the router's project: another project's router, even its
            # id, stays hidden there (the API's 404-for-foreign rule); the log names it.
            log.error(
                "router %s: namespace %s is the kernel namespace of router %s (project %s)",
                router.id,
                router.namespace,
                holder.router_id,
                holder.project_id,
            )
            return (
                f"namespace {router.namespace} is the same kernel namespace as a router of "
                f"another project, which was registered first and keeps it (the server log "
                f"names it)"
            )
        return (
            f"namespace {router.namespace} is the same kernel namespace ({holder.identity}) as "
            f"namespace {holder.namespace} of router {holder.router_id}, which was registered "
            f"first and keeps it"
        )

    def _refuse_namespace(self, desired: DesiredRouter, reason: str) -> ReconcileResult:
        """Nothing is read or written in the namespace. Not retried on a timer (a person must
        change /run/netns or the routers); the periodic resync looks again."""
        router = desired.router
        log.error("router %s: refused: %s", router.id, reason)
        self.book.failed(router.id, reason, namespace=router.namespace, kernel_unknown=True)
        self._report(desired, Status.ERROR, reason, {b.id: reason for b in desired.bindings})
        return ReconcileResult(router.id, Action.FAILED, reason)

    def _refuse(self, exc: InvalidDesiredState) -> ReconcileResult:
        """A stored router that fails validation: no namespace is touched on its behalf."""
        log.error("router %s: %s", exc.router_id, exc.reason)
        self.book.failed(exc.router_id, exc.reason, kernel_unknown=True)
        if exc.revision_number is not None:
            self._source.report(
                RouterReport(exc.router_id, exc.revision_number, Status.ERROR, exc.reason)
            )
        # Not retried on a timer: nothing changes until someone fixes the row (the periodic
        # resync looks again).
        return ReconcileResult(exc.router_id, Action.FAILED, exc.reason)

    def _remove_retired(self, router_id: str, namespace: str) -> bool:
        """Deletes what retired backends hold in the namespace; True if anything was removed.
        A failure here is logged, never fatal: our own table is already verified."""
        removed = False
        for retired in self._retired:
            try:
                if retired.read(namespace) is not None:
                    retired.delete(namespace)
                    removed = True
                    log.info(
                        "router %s: migrated: removed %s rules from %s",
                        router_id,
                        retired.label,
                        namespace,
                    )
            except NamespaceNotFound:
                return removed
            except (NftError, OSError) as exc:
                log.warning(
                    "router %s: could not check %s rules in %s: %s",
                    router_id,
                    retired.label,
                    namespace,
                    _message(exc),
                )
        return removed

    def _remove(self, router_id: str) -> ReconcileResult:
        with self._raw_lock:
            self._raw_seen.pop(router_id, None)
            self._raw_due.discard(router_id)
        with self._cache_lock:
            self._announced.pop(router_id, None)
        namespace = self._source.tombstones().get(router_id)
        self.claims.forget(router_id)
        if namespace is None:
            self.book.forget(router_id)
            return ReconcileResult(router_id, Action.NOOP)
        try:
            sharing = self.claims.sharing(namespace, exclude=router_id)
        except UnsafeNamespace as exc:
            return self._removed_nothing(router_id, exc.message)
        if sharing:
            # The table there is (or becomes) theirs: only its own table is ever removed.
            why = f"namespace {namespace} is also the namespace of router(s) {', '.join(sharing)}"
            return self._removed_nothing(router_id, why, requeue=tuple(sharing))
        try:
            held = self._backend.read(namespace)
            ours = self._backend.owner
            if held is not None and None not in (held.owner, ours) and held.owner != ours:
                # Another deployment on this host took the namespace over: its table stays.
                why = f"the table in {namespace} is deployment {held.owner}'s"
                return self._removed_nothing(router_id, why)
            self._backend.delete(namespace)
        except NamespaceNotFound:
            pass  # the namespace is gone, and our table with it
        except NftError as exc:
            reason = f"could not delete table in {namespace}: {_message(exc)}"
            return ReconcileResult(router_id, Action.FAILED, reason, retry=True)
        self._remove_retired(router_id, namespace)
        self._source.clear_tombstone(router_id)
        self.book.forget(router_id)
        log.info("router %s deleted: removed its table from %s", router_id, namespace)
        return ReconcileResult(router_id, Action.REMOVED)

    def _removed_nothing(
        self, router_id: str, why: str, requeue: tuple[str, ...] = ()
    ) -> ReconcileResult:
        """A deleted router whose namespace holds no table of its own: nothing is deleted."""
        self._source.clear_tombstone(router_id)
        self.book.forget(router_id)
        log.info("router %s deleted: no table removed (%s)", router_id, why)
        return ReconcileResult(router_id, Action.REMOVED, requeue=requeue)

    def _report(
        self,
        desired: DesiredRouter,
        router_status: Status,
        router_reason: str,
        binding_errors: dict[str, str],
        binding_notes: Mapping[str, str] | None = None,
    ) -> tuple[BindingReport, ...]:
        """binding_notes: reasons of bindings that stay ACTIVE (shadowed ones). Returns the
        binding reports written."""
        # Only what changed is written: a no-op resync writes nothing, to the kernel or the DB.
        notes = binding_notes or {}
        bindings: list[BindingReport]
        if not binding_errors and not notes:
            # The usual case, in one pass of a comprehension (~4x the loop below at 1000).
            active = Status.ACTIVE
            bindings = [
                BindingReport(b.id, b.revision_number, active, "")
                for b in desired.bindings
                if b.status is not active or b.status_reason
            ]
        else:
            bindings = []
            for b in desired.bindings:
                status = Status.ERROR if b.id in binding_errors else Status.ACTIVE
                reason = binding_errors.get(b.id) or notes.get(b.id, "")
                if (b.status, b.status_reason) != (status, reason):
                    bindings.append(BindingReport(b.id, b.revision_number, status, reason))
        # Rows rejected on the way out of the database are always (re)marked: their stored status
        # was not read, and they are rare (a database edited behind the API's back).
        bindings.extend(desired.rejected)
        router = desired.router
        if not bindings and (router.status, router.status_reason) == (router_status, router_reason):
            return ()
        if router.status is not router_status:
            _log_transition(router, router_status, router_reason)
        self._source.report(
            RouterReport(
                desired.router.id,
                desired.router.revision_number,
                router_status,
                router_reason,
                tuple(bindings),
                router_changed=(router.status, router.status_reason)
                != (router_status, router_reason),
            )
        )
        return tuple(bindings)


# A few changed bindings are edited into the last assignments; more are rebuilt.
EDIT_LIMIT = 64


def _log_transition(router: Router, status: Status, reason: str) -> None:
    """One line whenever a router goes to ERROR or comes back from it (a namespace gone
    included): the status reported is compared with the one stored, so it is said once."""
    who = f"router {router.id} ({router.name}, namespace {router.namespace})"
    if status is Status.ERROR:
        was = getattr(router.status, "value", router.status)
        log.warning("%s is now ERROR (was %s): %s", who, was, reason)
    elif router.status is Status.ERROR:
        log.info("%s is %s again%s", who, status.value, f": {reason}" if reason else "")


def _assignment_key(assignment: Assignment) -> tuple[Protocol, int, Direction]:
    """The order assignments_for() sorts in."""
    return (assignment.protocol, assignment.port, assignment.direction)


def _by_binding(
    usable: Sequence[HelperBinding], assignments: Sequence[Assignment]
) -> dict[str, tuple[int, Assignment]] | None:
    if len(usable) != len(assignments):
        return None  # merged or left out: not one to one
    by_key = {_assignment_key(a): a for a in assignments}
    by_binding = {}
    for b in usable:
        assignment = by_key.get((b.protocol, b.port, b.direction))
        if assignment is None:
            return None
        by_binding[b.id] = (b.revision_number, assignment)
    return by_binding


def _assignments_by_binding(
    catalog: HelperCatalog, usable: Sequence[HelperBinding]
) -> tuple[list[Assignment], dict[str, tuple[int, Assignment]] | None]:
    """(assignments_for(catalog, usable), _by_binding(usable, those)) in one pass over the
    bindings (a full sync of a router of 1000: ~0.4 ms less than the two)."""
    merged: dict[tuple[Protocol, int, Direction], Assignment] = {}
    kernel_name: dict[tuple[str, Protocol], str | None] = {}  # resolved once per kind
    by_binding: dict[str, tuple[int, Assignment]] = {}
    one_to_one = True  # no binding left out by the catalog, none merged with another
    for b in usable:
        protocol = b.protocol
        kind = (b.helper, protocol)
        try:
            name = kernel_name[kind]
        except KeyError:
            try:
                name = kernel_name[kind] = catalog.resolve(*kind).name
            except InvalidInput:
                name = kernel_name[kind] = None
        if name is None:
            one_to_one = False
            continue
        key = (protocol, b.port, b.direction)
        if key in merged:
            one_to_one = False
        assignment = merged[key] = Assignment(protocol, b.port, name, b.direction)
        by_binding[b.id] = (b.revision_number, assignment)
    # Sorting the unique keys is Assignment order, at tuple speed (as assignments_for()).
    return [merged[key] for key in sorted(merged)], by_binding if one_to_one else None


def _edited_assignments(
    catalog: HelperCatalog,
    last: Sequence[Assignment],
    last_by_binding: dict[str, tuple[int, Assignment]],
    usable: Sequence[HelperBinding],
    *,
    changes: BindingEdit | None = None,
) -> tuple[list[Assignment], dict[str, tuple[int, Assignment]], list[Assignment]] | None:
    """assignments_for(catalog, usable), made from the last assignments by removing those of
    the bindings gone or changed and adding the new ones (also returned, third); None when that
    is not simple (many changes, a merge, a helper the catalog refuses): the caller rebuilds
    them. changes: how `usable` came from the last bindings (all of them usable), when known:
    then only those are looked at."""
    added: list[HelperBinding]
    gone: set[str]
    if changes is not None:
        added = list(changes.fresh)
        gone = {b_id for b_id in changes.changed if b_id in last_by_binding}
    else:
        # Comprehensions and set operations, not a loop over the thousand bindings (~3x faster).
        added = [
            b
            for b in usable
            if (held := last_by_binding.get(b.id)) is None or held[0] != b.revision_number
        ]
        if len(added) > EDIT_LIMIT:
            return None
        changed = {b.id for b in added if b.id in last_by_binding}
        if len(usable) - len(added) == len(last_by_binding) - len(changed):
            gone = changed  # every other binding of `last` is still there, unchanged
        else:
            gone = (last_by_binding.keys() - {b.id for b in usable}) | changed
    if len(added) + len(gone) > EDIT_LIMIT:
        return None
    by_binding = dict(last_by_binding)
    for b_id in gone:
        del by_binding[b_id]
    result = list(last)
    for b_id in gone:
        key = _assignment_key(last_by_binding[b_id][1])
        index = bisect_left(result, key, key=_assignment_key)
        if index == len(result) or _assignment_key(result[index]) != key:
            return None
        del result[index]
    new = []
    for b in added:
        try:
            name = catalog.resolve(b.helper, b.protocol).name
        except InvalidInput:
            return None
        assignment = Assignment(b.protocol, b.port, name, b.direction)
        key = _assignment_key(assignment)
        index = bisect_left(result, key, key=_assignment_key)
        if index < len(result) and _assignment_key(result[index]) == key:
            return None  # two bindings on one key merge
        result.insert(index, assignment)
        by_binding[b.id] = (b.revision_number, assignment)
        new.append(assignment)
    return result, by_binding, new


def _with_status(binding: HelperBinding, report: BindingReport) -> HelperBinding:
    """The binding as the store holds it once the report is written (if still at its revision:
    else the next reload reads the row again anyway; another binding's report: kept as it was,
    at worst written again by the next reconcile)."""
    if report.revision_number != binding.revision_number or report.binding_id != binding.id:
        return binding
    return restore_binding_fields(
        binding.id,
        binding.router_id,
        binding.project_id,
        binding.protocol,
        binding.port,
        binding.helper,
        binding.direction,
        report.status,
        # As the store cleans it; most reasons are empty (a cold sync: every binding ACTIVE).
        validate_status_reason(report.reason) if report.reason else "",
        binding.revision_number,
        binding.created_at,
        binding.updated_at,
    )


def _shadowed_binding(binding: HelperBinding, shadow: Shadow) -> ShadowedBinding:
    rule = shadow.rule
    gives = f"helper {rule.helper}" if rule.helper is not None else "no helper at all"
    family = " (IPv6 only)" if shadow.families == ("IPv6",) else ""
    condition = (
        f" (if its other matches hold: {' '.join(rule.conditions)})" if rule.conditions else ""
    )
    # As the store keeps it (cleaned, bounded): the same reason again must write nothing.
    reason = validate_status_reason(
        f"shadowed by rule `{rule.text}` in {rule.where}{family}{condition}: "
        f"connections get {gives}, not {binding.helper}"
    )
    return ShadowedBinding(
        binding_id=binding.id,
        protocol=binding.protocol.value,
        port=binding.port,
        direction=binding.direction.value,
        helper=binding.helper,
        kernel_helper=shadow.assignment.helper,
        rule=rule.text,
        where=rule.where,
        families=shadow.families,
        foreign_helper=rule.helper,
        conditions=rule.conditions,
        effect=shadow.effect,
        reason=reason,
    )


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return " ".join(str(text).split())[:500]
