"""Desired state from the local store (the embedded `cthm serve`).

reload() serves the agent's partial syncs. When the store's revision notes vouch for the router
(every revision since `last` is a binding write of this process, giving the binding as it
committed it, and nothing since the router was last read says it may have changed otherwise:
store/revisions.py `router_edits`), nothing is read: an API write's way to the kernel (issue
14; the read-only unit of work was ~0.5 ms of it). Else the router row is read (and validated);
its bindings are taken from the last desired state while the router's revision is unchanged
(every binding change through the store moves it), else only the bindings changed are read
again: the store's revision notes name them when every new revision was committed by this
process (store/revisions.py: no scan at all), and give them as committed when its writes did
(an API's create, update or delete: then no binding is read, only the router's row), else a
narrow id/revision query finds them
(~2 ms for 1000 rows, against ~5 ms to read and convert them all). Rows edited behind the
store's back are seen by the next load() (every full sync: start, failure, the periodic
resync).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import replace

from cthm.agent.ports import (
    BindingEdit,
    BindingReport,
    DesiredRouter,
    InvalidDesiredState,
    RouterReport,
)
from cthm.domain import (
    HelperBinding,
    InvalidInput,
    Router,
    RouterNotFound,
    Status,
    Unavailable,
)
from cthm.store import Repository, Store

# A reload that finds more changed bindings than this share reads them all (one query).
RELOAD_ALL_SHARE = 0.25


class LocalStoreSource:
    def __init__(self, store: Store) -> None:
        self._store = store
        # Per thread: the reports held since hold_reports() (None: written at once).
        self._held = threading.local()

    def load(self, router_id: str) -> DesiredRouter | None:
        notes = self._store.revision_notes
        began = notes.reading()
        with self._store.unit_of_work(write=False) as repo:
            try:
                router = repo.get_router(router_id)
            except RouterNotFound:
                return None
            except InvalidInput as exc:  # the row was edited behind the API's back
                raise InvalidDesiredState(
                    router_id, repo.router_revision(router_id), f"refused: {exc.message}"
                ) from exc
            bindings, rejected = repo.desired_bindings(router_id)
        notes.read(router_id, began)
        return _desired(router, bindings, rejected)

    def reload(self, router_id: str, last: DesiredRouter) -> DesiredRouter | None:
        notes = self._store.revision_notes
        if not last.rejected:
            vouched = notes.router_edits(last.router)
            if vouched is not None:
                return _edited(*vouched, last)
        began = notes.reading()
        with self._store.unit_of_work(write=False) as repo:
            try:
                router = repo.get_router(router_id)
            except RouterNotFound:
                return None
            except InvalidInput as exc:
                raise InvalidDesiredState(
                    router_id, repo.router_revision(router_id), f"refused: {exc.message}"
                ) from exc
            notes.read(router_id, began)
            if router.created_at != last.router.created_at:
                # Deleted and created again under its id since `last`: nothing of it is kept.
                return _desired(router, *repo.desired_bindings(router_id))
            if router.revision_number == last.router.revision_number and not last.rejected:
                return DesiredRouter(router, last.bindings)
            noted = None
            if not last.rejected:
                since, now = last.router.revision_number, router.revision_number
                # The bindings as this process committed them: none read (an API write's way
                # to the kernel, issue 14); else the ones named read again.
                edits = notes.edits(router_id, since, now)
                if edits is not None:
                    return _edited(router, edits, last)
                noted = notes.changed(router_id, since, now)
            if noted is not None:
                fresh, rejected = repo.desired_bindings(router.id, noted) if noted else ([], [])
                return _noted(router, last, noted, fresh, rejected)
            return _changed(repo, router, last)

    def load_all(self) -> dict[str, DesiredRouter | InvalidDesiredState]:
        with self._store.unit_of_work(write=False) as repo:
            routers = repo.desired_routers()
            bindings = repo.all_desired_bindings()
        found: dict[str, DesiredRouter | InvalidDesiredState] = {}
        for router_id, revision, router in routers:
            if isinstance(router, InvalidInput):
                found[router_id] = InvalidDesiredState(
                    router_id, revision, f"refused: {router.message}"
                )
            else:
                found[router_id] = _desired(router, *bindings.get(router_id, ([], [])))
        return found

    def router_ids(self) -> list[str]:
        with self._store.unit_of_work(write=False) as repo:
            return repo.list_router_ids()

    def tombstones(self) -> dict[str, str]:
        with self._store.unit_of_work(write=False) as repo:
            return repo.tombstones()

    def clear_tombstone(self, router_id: str) -> None:
        with self._store.unit_of_work() as repo:
            repo.clear_tombstone(router_id)

    def report(self, report: RouterReport) -> None:
        held = getattr(self._held, "reports", None)
        if held is not None:  # hold_reports(): written by this thread's flush_reports()
            held.append(report)
            return
        self.report_many([report])

    def report_many(self, reports: Sequence[RouterReport]) -> None:
        """All in one transaction, in order."""
        # Guarded by revision numbers: a report on an older revision never overwrites newer state.
        # Not fsynced (durable=False, see Store.unit_of_work): a report is derived from the
        # kernel, and one lost (power failure; a PostgreSQL server crash) is written again by
        # the next full sync, at the start or the periodic resync: it reads the stored statuses
        # and rewrites those that differ. Saves the fsync (~1 ms) of each reconcile's report.
        # One statement per table for the whole run (executemany, rows in the reports' order):
        # a cold sync's statement per router was ~1 ms of SQLAlchemy work each.
        with self._store.unit_of_work(durable=False) as repo:
            # A router whose status the report leaves as read: its row not written (an add's
            # report is then one statement).
            repo.set_router_statuses(
                (r.router_id, r.revision_number, r.status, r.reason)
                for r in reports
                if r.router_changed
            )
            repo.set_binding_statuses(
                (b.binding_id, b.revision_number, b.status, b.reason)
                for r in reports
                for b in r.bindings
            )

    def hold_reports(self) -> None:
        """This thread's next reports wait for its flush_reports() (a worker's run of routers
        written in one fsynced transaction, not one per router)."""
        self._held.reports = []

    def held_rows(self) -> int:
        """Rows (routers and bindings) this thread's held reports will write: the agent
        flushes a run early when it is large (a cold sync of routers holding 1000 bindings)."""
        held: list[RouterReport] = getattr(self._held, "reports", None) or []
        return sum(1 + len(report.bindings) for report in held)

    def flush_reports(self) -> dict[str, Exception]:
        """Writes what this thread held; the routers whose report could not be written, with
        why (each then retried alone, so one bad report fails no other)."""
        held: list[RouterReport] = self._held.reports or []
        self._held.reports = None
        if not held:  # a run that changed no status (a no-op resync, a delete): no transaction
            return {}
        try:
            self.report_many(held)
            return {}
        except Unavailable as exc:  # the database: no single report is to blame
            return {report.router_id: exc for report in held}
        except Exception as exc:  # noqa: BLE001 - handed to the router's retry
            if len(held) == 1:
                return {held[0].router_id: exc}
        failed: dict[str, Exception] = {}
        for report in held:
            try:
                self.report_many([report])
            except Exception as exc:  # noqa: BLE001 - handed to the router's retry
                failed[report.router_id] = exc
        return failed


def _desired(
    router: Router, bindings: Sequence[HelperBinding], rejected: Sequence[tuple[str, int, str]]
) -> DesiredRouter:
    return DesiredRouter(
        router,
        tuple(bindings),
        tuple(BindingReport(b_id, rev, Status.ERROR, why) for b_id, rev, why in rejected),
    )


def _changed(repo: Repository, router: Router, last: DesiredRouter) -> DesiredRouter:
    """The router's desired state: the bindings of `last` still at their revision, the others
    read again (all of them when many changed)."""
    revisions = repo.binding_revisions(router.id)
    known = {b.id: b for b in last.bindings}
    stale = [
        b_id
        for b_id, revision in revisions.items()
        if (held := known.get(b_id)) is None or held.revision_number != revision
    ]
    if len(stale) > RELOAD_ALL_SHARE * max(len(revisions), 1):
        return _desired(router, *repo.desired_bindings(router.id))
    fresh, rejected = repo.desired_bindings(router.id, stale) if stale else ([], [])
    stale_ids = set(stale)
    # In the order desired_bindings() gives, (protocol, port, direction) as the database sorts
    # it: `last` is in it already, the few fresh ones are put in place.
    bindings = [b for b in last.bindings if b.id in revisions and b.id not in stale_ids]
    for binding in fresh:
        key = _order(binding)
        bindings.insert(bisect_left(bindings, key, key=_order), binding)
    return _desired(router, bindings, rejected)


def _noted(
    router: Router,
    last: DesiredRouter,
    changed: frozenset[str],
    fresh: Sequence[HelperBinding],
    rejected: Sequence[tuple[str, int, str]],
) -> DesiredRouter:
    """The router's desired state: `last` with the bindings the revision notes name as read
    again (`fresh`, `rejected`; absent now: deleted)."""
    bindings = [b for b in last.bindings if b.id not in changed]
    for binding in fresh:
        key = _order(binding)
        bindings.insert(bisect_left(bindings, key, key=_order), binding)
    desired = _desired(router, bindings, rejected)
    if rejected or last.rejected:
        return desired
    # How it came from `last` (the reconciler edits what it derived by these alone).
    return replace(desired, edit=BindingEdit(last.bindings, changed, tuple(fresh)))


def _edited(
    router: Router, edits: dict[str, HelperBinding | None], last: DesiredRouter
) -> DesiredRouter:
    """`last` with the bindings the revision notes give (as their writes committed them)."""
    # Without the timestamps, as a read for the agent gives them (restore_desired).
    fresh = [
        replace(binding, created_at=None, updated_at=None)
        for binding in edits.values()
        if binding is not None
    ]
    return _noted(router, last, frozenset(edits), fresh, ())


def _order(binding: HelperBinding) -> tuple[str, int, str]:
    return (binding.protocol.value, binding.port, binding.direction.value)
