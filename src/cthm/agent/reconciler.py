"""reconcile(router_id): make one router's kernel table equal its desired state, then verify.

There are no create/update/delete paths: every call re-reads desired and kernel state and
enforces the whole of it (Kubernetes controller style). Nothing is written when they agree.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cthm.agent.capabilities import HelperCapabilities
from cthm.agent.kernel_state import KernelStateBook, describe_difference
from cthm.agent.ports import (
    BindingReport,
    DesiredRouter,
    DesiredStateSource,
    InvalidDesiredState,
    KernelBackend,
    RouterReport,
)
from cthm.domain import HelperCatalog, InvalidInput, Protocol, Status, assignments_for
from cthm.netfilter import NamespaceNotFound, NftError

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


class VerificationFailed(Exception):
    """The kernel did not hold what was just applied."""


class Reconciler:
    def __init__(
        self,
        source: DesiredStateSource,
        backend: KernelBackend,
        catalog: HelperCatalog,
        capabilities: HelperCapabilities,
        book: KernelStateBook | None = None,
        retired: Sequence[KernelBackend] = (),
    ) -> None:
        self._source = source
        self._backend = backend
        self._catalog = catalog
        self._capabilities = capabilities
        self.book = book if book is not None else KernelStateBook()
        # Backends this node used before (nftables <-> iptables): their rules are removed once
        # ours are verified, so switching a node's backend migrates its routers.
        self._retired = tuple(retired)
        self._migration_checked: set[str] = set()

    def reconcile(self, router_id: str) -> ReconcileResult:
        try:
            desired = self._source.load(router_id)
        except InvalidDesiredState as exc:
            return self._refuse(exc)
        if desired is None:
            return self._remove(router_id)
        namespace = desired.router.namespace
        revision = desired.router.revision_number
        kernel_read = False  # whether this call read the kernel (else its state is unknown)
        drift = False
        try:
            refused = self._refused_bindings(desired)
            usable = [b for b in desired.bindings if b.id not in refused]
            assignments = assignments_for(self._catalog, usable)
            want = self._backend.desired(assignments)
            action = Action.NOOP
            have = self._backend.read(namespace)
            kernel_read = True
            matches = have == want  # compared once: a thousand assignments a side
            # Asked before observed(): a mismatch makes the book forget the verification.
            drift = not matches and self.book.is_drift(router_id, namespace, revision, want)
            if not self.book.observed(router_id, namespace, revision, want, have, matches=matches):
                if drift:
                    self.book.drift_detected(router_id)
                    log.warning(
                        "router %s: drift in namespace %s (changed behind cthm's back): %s; "
                        "repairing",
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
        except NamespaceNotFound:
            reason = f"namespace {namespace} not found"
            self.book.failed(router_id, reason, namespace=namespace, namespace_missing=True)
            self._report(desired, Status.ERROR, reason, {b.id: reason for b in desired.bindings})
            return ReconcileResult(
                router_id,
                Action.FAILED,
                reason,
                retry=True,
                missing_namespace=namespace,
                drift=drift,
            )
        except (NftError, VerificationFailed) as exc:
            self._capabilities.invalidate()  # a helper may have gone; probe again next time
            reason = f"kernel refused the change: {_message(exc)}"
            log.warning("router %s: %s", router_id, reason)
            self.book.failed(router_id, reason, namespace=namespace, kernel_unknown=not kernel_read)
            self._report(desired, Status.ERROR, reason, {b.id: reason for b in desired.bindings})
            return ReconcileResult(router_id, Action.FAILED, reason, retry=True, drift=drift)

        if self._retired and (action is Action.APPLIED or router_id not in self._migration_checked):
            # Once per router per run, and after each change: never on a no-op resync.
            self._migration_checked.add(router_id)
            if self._remove_retired(router_id, namespace):
                action = Action.APPLIED
        summary = ""
        failed = len(refused) + len(desired.rejected)
        if failed:
            total = len(desired.bindings) + len(desired.rejected)
            summary = f"{failed} of {total} bindings could not be applied"
        self._report(desired, Status.ACTIVE, summary, refused)
        if action is Action.APPLIED:
            log.info("router %s: applied %d assignments", router_id, len(assignments))
        return ReconcileResult(router_id, action, summary, drift=drift)

    def _refused_bindings(self, desired: DesiredRouter) -> dict[str, str]:
        """Bindings that cannot be in the kernel, with the reason a person can act on."""
        # Resolved once per distinct (helper, protocol): a router may hold thousands of bindings.
        kernel_kind: dict[tuple[str, Protocol], tuple[str, Protocol] | str] = {}
        for binding in desired.bindings:
            kind = (binding.helper, binding.protocol)
            if kind not in kernel_kind:
                try:
                    kernel_kind[kind] = (self._catalog.resolve(*kind).name, binding.protocol)
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
                        _label(retired),
                        namespace,
                    )
            except NamespaceNotFound:
                return removed
            except (NftError, OSError) as exc:
                log.warning(
                    "router %s: could not check %s rules in %s: %s",
                    router_id,
                    _label(retired),
                    namespace,
                    _message(exc),
                )
        return removed

    def _remove(self, router_id: str) -> ReconcileResult:
        namespace = self._source.tombstones().get(router_id)
        if namespace is None:
            self.book.forget(router_id)
            return ReconcileResult(router_id, Action.NOOP)
        try:
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

    def _report(
        self,
        desired: DesiredRouter,
        router_status: Status,
        router_reason: str,
        binding_errors: dict[str, str],
    ) -> None:
        # Only what changed is written: a no-op resync writes nothing, to the kernel or the DB.
        bindings = []
        for b in desired.bindings:
            status = Status.ERROR if b.id in binding_errors else Status.ACTIVE
            reason = binding_errors.get(b.id, "")
            if (b.status, b.status_reason) != (status, reason):
                bindings.append(BindingReport(b.id, b.revision_number, status, reason))
        # Rows rejected on the way out of the database are always (re)marked: their stored status
        # was not read, and they are rare (a database edited behind the API's back).
        bindings.extend(desired.rejected)
        router = desired.router
        if not bindings and (router.status, router.status_reason) == (router_status, router_reason):
            return
        self._source.report(
            RouterReport(
                desired.router.id,
                desired.router.revision_number,
                router_status,
                router_reason,
                tuple(bindings),
            )
        )


def _label(backend: KernelBackend) -> str:
    label = getattr(backend, "label", None)
    return label if isinstance(label, str) else type(backend).__name__


def _message(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return " ".join(str(text).split())[:500]
