"""What the agent last saw in each router's kernel table: the verified state, kept in memory.

Kept here and not in the database on purpose: a no-op resync must write nothing to the DB, yet
`verified_at` moves on every successful read-back. The record also carries what drift detection
needs: the desired state (router revision and expected table) this agent last verified. The
records are the domain's RouterKernelState values, which the API presents.

It also decides which sync a router's next reconcile may do: a partial one (element changes to
the table last verified, agent/reconciler.py) only while that verified table is trusted; the
first look at a router in this process, any failure, drift, a namespace change and the periodic
resync (`need_full`) make the next one full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cthm.agent.ports import KernelState
from cthm.domain import Assignment, Direction, RouterKernelState, ShadowedBinding


@dataclass(frozen=True, slots=True)
class _Verified:
    """The desired state last verified in the kernel: the same one again means drift."""

    namespace: str
    revision_number: int
    want: object  # the backend's desired form, compared with ==
    table: KernelState | None = None  # what the kernel was read to hold (== want)


@dataclass(frozen=True, slots=True)
class VerifiedTable:
    """The table last verified in a router's namespace, trusted for a partial sync."""

    namespace: str
    revision_number: int
    table: KernelState
    # The desired state `table` was found equal to (observed()'s `want`): a caller holding this
    # very object knows the two equal without comparing them again.
    want: object = None


class KernelStateBook:
    """Thread-safe records, one per router; workers write, the API reads snapshots."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or _utcnow
        self._lock = threading.Lock()
        self._states: dict[str, RouterKernelState] = {}
        self._verified: dict[str, _Verified] = {}
        self._drifting: set[str] = set()  # drift seen, not yet repaired
        self._full_due: set[str] = set()  # the next reconcile must read the whole table
        self._usage: dict[str, tuple[datetime, list[dict[str, Any]]]] = {}  # last read
        # Summaries carry the usage only for an API that takes it (node.py sets this from
        # the API's answer): an older API refuses fields it does not know.
        self.share_usage = False

    def get(self, router_id: str) -> RouterKernelState | None:
        with self._lock:
            return self._states.get(router_id)

    def observed(
        self,
        router_id: str,
        namespace: str,
        revision_number: int,
        want: KernelState | None,
        have: KernelState | None,
        *,
        matches: bool | None = None,
        full: bool = True,
    ) -> bool:
        """Records a read of the kernel. True when it matches the desired state (verified).
        A mismatch forgets the last verification, so drift is counted once per occurrence.
        `matches`: `have == want` when the caller already compared them. full: the whole table
        was read (a match ends a pending need_full); False: a partial sync's read-back."""
        now = self._clock()
        if matches is None:
            matches = have == want
        with self._lock:
            state = self._state(router_id)
            state = replace(
                state,
                namespace=namespace,
                revision_number=revision_number,
                desired=_assignments(want),
                actual=_assignments(have) if have is not None else (),
                table_present=have is not None,
                garbage=tuple(have.garbage) if have is not None else (),
                in_sync=matches,
                checked_at=now,
                verified_at=now if matches else state.verified_at,
            )
            if matches and router_id in self._drifting:
                self._drifting.discard(router_id)
                state = replace(state, drift_repairs=state.drift_repairs + 1)
            self._states[router_id] = state
            if matches:
                self._verified[router_id] = _Verified(namespace, revision_number, want, have)
                if full:
                    self._full_due.discard(router_id)
            else:
                self._verified.pop(router_id, None)
                self._full_due.add(router_id)
        return matches

    def verified_table(self, router_id: str, namespace: str) -> VerifiedTable | None:
        """The table last verified in `namespace` for the router, if a partial sync may start
        from it: None when the next reconcile must be full (see the module doc)."""
        with self._lock:
            if router_id in self._full_due:
                return None
            last = self._verified.get(router_id)
        if last is None or last.namespace != namespace or last.table is None:
            return None
        return VerifiedTable(last.namespace, last.revision_number, last.table, last.want)

    def unchanged(self, router_id: str, revision_number: int) -> None:
        """A new revision whose table is the one last verified (nothing written or read): the
        verification stands for it, so its drift is still told from a change."""
        with self._lock:
            last = self._verified.get(router_id)
            if last is not None:
                self._verified[router_id] = replace(last, revision_number=revision_number)
            state = self._states.get(router_id)
            if state is not None:
                self._states[router_id] = replace(state, revision_number=revision_number)

    def need_full(self, router_ids: Iterable[str]) -> None:
        """The next reconcile of each router reads and compares the whole table (resync,
        drift suspected, an error the reconciler did not see)."""
        with self._lock:
            self._full_due.update(router_ids)

    def is_drift(
        self, router_id: str, namespace: str, revision_number: int, want: KernelState | None
    ) -> bool:
        """Whether this exact desired state was verified before (so a difference now was made
        behind cthm's back, not by a user's change)."""
        with self._lock:
            last = self._verified.get(router_id)
        return (
            last is not None
            and (last.namespace, last.revision_number) == (namespace, revision_number)
            and last.want == want
        )

    def drift_detected(self, router_id: str) -> None:
        """Counted as repaired (`drift_repairs`) at the next successful verification."""
        with self._lock:
            self._drifting.add(router_id)

    def failed(
        self,
        router_id: str,
        reason: str,
        *,
        namespace: str | None = None,
        kernel_unknown: bool = False,
        namespace_missing: bool = False,
    ) -> None:
        """Records an error. kernel_unknown: the kernel could not be read (in_sync unknown);
        namespace_missing: the kernel holds nothing for the router (in_sync False)."""
        now = self._clock()
        with self._lock:
            self._full_due.add(router_id)
            state = self._state(router_id)
            changes: dict[str, object] = {"last_error": reason, "last_error_at": now}
            if namespace is not None:
                changes["namespace"] = namespace
            if namespace_missing:
                changes.update(
                    actual=(), table_present=False, garbage=(), in_sync=False, checked_at=now
                )
            elif kernel_unknown:
                changes.update(actual=None, table_present=None, garbage=(), in_sync=None)
            self._states[router_id] = replace(state, **changes)  # type: ignore[arg-type]

    def shadows(
        self,
        router_id: str,
        shadowed: tuple[ShadowedBinding, ...],
        checked_at: datetime | None,
    ) -> None:
        """Records the bindings found shadowed, and when the raw tables were last read."""
        with self._lock:
            state = self._state(router_id)
            self._states[router_id] = replace(
                state, shadowed=shadowed, shadow_checked_at=checked_at
            )

    def summary(self, router_id: str) -> dict[str, Any] | None:
        """The router's record as a node agent reports it to the API (the kernel summary of
        issue 12's contract: plain JSON, lists bounded); None when there is none, or the
        router's namespace is unknown (its row was refused before any look). With
        `share_usage`, its helper usage as last read too (`usage`, `usage_read_at`)."""
        with self._lock:
            state = self._states.get(router_id)
            usage = self._usage.get(router_id) if self.share_usage else None
        if state is None or state.namespace is None:
            return None
        return _with_usage(_summary(state), usage)

    def summaries(self) -> list[dict[str, Any]]:
        """summary() of every router with one, by router id."""
        with self._lock:
            states = sorted(self._states.items())
            usage = dict(self._usage) if self.share_usage else {}
        return [
            _with_usage(_summary(s), usage.get(rid)) for rid, s in states if s.namespace is not None
        ]

    def usage_read(self, router_id: str, rows: list[dict[str, Any]]) -> None:
        """The router's helper usage as just read (agent/usage.py): rows of helper, protocol,
        port, connections, expectations."""
        with self._lock:
            self._usage[router_id] = (self._clock(), rows[:SUMMARY_ASSIGNMENTS])

    def usage_unknown(self, router_id: str) -> None:
        """The usage could not be read (or the router has no binding left): none is shown."""
        with self._lock:
            self._usage.pop(router_id, None)

    def with_bindings(self) -> dict[str, tuple[str, frozenset[tuple[str, str, int]]]]:
        """Router id -> (namespace, its bindings' (kernel helper, protocol, port)) of every
        router whose desired table is known and not empty (agent/usage.py reads these)."""
        with self._lock:
            states = list(self._states.values())
        return {
            s.router_id: (
                s.namespace,
                frozenset((a.helper, a.protocol.value, a.port) for a in s.desired),
            )
            for s in states
            if s.namespace is not None and s.desired
        }

    def forget(self, router_id: str) -> None:
        """The router is gone (its table removed): nothing left to show."""
        with self._lock:
            self._states.pop(router_id, None)
            self._usage.pop(router_id, None)
            self._verified.pop(router_id, None)
            self._drifting.discard(router_id)
            self._full_due.discard(router_id)

    def _state(self, router_id: str) -> RouterKernelState:
        return self._states.get(router_id) or RouterKernelState(router_id)


SUMMARY_ASSIGNMENTS = 100  # missing / unexpected entries a summary carries at most
SUMMARY_GARBAGE = 20
SUMMARY_TEXT = 1024


def _summary(state: RouterKernelState) -> dict[str, Any]:
    desired = set(state.desired or ())
    actual = set(state.actual) if state.actual is not None else None
    missing = sorted(desired - actual) if actual is not None else []
    unexpected = sorted(actual - desired) if actual is not None else []
    return {
        "router_id": state.router_id,
        "namespace": state.namespace,
        "revision_number": state.revision_number,
        "in_sync": state.in_sync,
        "table_present": state.table_present,
        "missing": [_summary_row(a) for a in missing[:SUMMARY_ASSIGNMENTS]],
        "unexpected": [_summary_row(a) for a in unexpected[:SUMMARY_ASSIGNMENTS]],
        "garbage": [text[:SUMMARY_TEXT] for text in state.garbage[:SUMMARY_GARBAGE]],
        "checked_at": _timestamp(state.checked_at),
        "verified_at": _timestamp(state.verified_at),
        "last_error": state.last_error[:SUMMARY_TEXT] if state.last_error is not None else None,
        "last_error_at": _timestamp(state.last_error_at),
        "drift_repairs": state.drift_repairs,
    }


def _with_usage(
    summary: dict[str, Any], usage: tuple[datetime, list[dict[str, Any]]] | None
) -> dict[str, Any]:
    if usage is not None:
        read_at, rows = usage
        summary["usage"] = rows
        summary["usage_read_at"] = _timestamp(read_at)
    return summary


def _summary_row(assignment: Assignment) -> dict[str, Any]:
    return {
        "protocol": assignment.protocol.value,
        "port": assignment.port,
        "direction": assignment.direction.value,
        "kernel_helper": assignment.helper,
    }


def _timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, as the API writes timestamps."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def describe_difference(want: KernelState | None, have: KernelState | None) -> str:
    """What differs between the desired and the actual table, for one log line."""
    if have is None:
        return "our table is missing"
    if want is None:
        return "a table exists where none should"
    wanted, held = set(want.assignments), set(have.assignments)
    parts = []
    missing = sorted(wanted - held)
    extra = sorted(held - wanted)
    if missing:
        parts.append("missing " + ", ".join(_shown(a) for a in missing))
    if extra:
        parts.append("unexpected " + ", ".join(_shown(a) for a in extra))
    if have.garbage:
        parts.append("not ours: " + "; ".join(have.garbage))
    if have.owner != want.owner:
        parts.append(f"marked as deployment {have.owner or '(unmarked)'}, not {want.owner}")
    if not parts:
        parts.append("helper objects or chain differ")
    return "; ".join(parts)[:1000]


def _shown(assignment: Assignment) -> str:
    shown = f"{assignment.protocol}/{assignment.port}={assignment.helper}"
    if assignment.direction is Direction.INGRESS:
        return shown
    return f"{assignment.direction} {shown}"


def _assignments(state: KernelState | None) -> tuple[Assignment, ...] | None:
    return tuple(state.assignments) if state is not None else None


def _utcnow() -> datetime:
    return datetime.now(UTC)
