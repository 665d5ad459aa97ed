"""The audit trail: who changed what, and who was denied.

A change's audit row is written in the change's own transaction, so a committed change always
has its record and a rolled-back one leaves none. Once the transaction has committed, each row
is also written as one JSON line on the `cthm.audit` logger (never before: a line must not tell
of a change the database does not hold).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict, Unpack, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from cthm.domain import ListQuery
from cthm.store.listing import apply_query, columns_of
from cthm.store.prepared import Prepared
from cthm.store.tables import AuditEventRow

audit_log = logging.getLogger("cthm.audit")
_INSERT_AUDIT = Prepared(insert(cast(Table, AuditEventRow.__table__)))

AUDIT_FIELDS = (
    "id",
    "time",
    "request_id",
    "token_id",
    "project_id",
    "action",
    "target_type",
    "target_id",
    "target_project_id",
    "outcome",
    "status_code",
    "before",
    "after",
    "detail",
)

# Column sizes (tables.AuditEventRow): text longer than its column is cut, never refused, so a
# long probe is still recorded.
_LIMITS = {
    "request_id": 64,
    "token_id": 36,
    "project_id": 64,
    "action": 64,
    "target_type": 32,
    "target_id": 64,
    "target_project_id": 64,
    "detail": 1024,
}

# An API token's shape (cthm_ + 43 urlsafe characters): wherever one shows up in recorded text
# (a path a client mistyped), it is masked.
_SECRET = re.compile(r"cthm_[A-Za-z0-9_-]{20,}")


class Outcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who is acting in this unit of work. Never carries a token secret."""

    request_id: str
    token_id: str | None
    project_id: str | None


class AuditEvent(TypedDict):
    """What an audit event is given (AuditLog.record, event_values): its target and change, and
    optionally its outcome, HTTP status and detail; context and time for an event recorded later
    than it happened (denied attempts, written in batches; default: the unit's, now); event_id
    when the caller needs to know the row's id in advance (default: a new one)."""

    action: str
    target_type: str
    target_id: str | None
    target_project_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    outcome: NotRequired[str]
    status_code: NotRequired[int]
    detail: NotRequired[str]
    context: NotRequired[AuditContext | None]
    time: NotRequired[datetime | None]
    event_id: NotRequired[str | None]


def redact(text: str) -> str:
    return _SECRET.sub("cthm_[redacted]", text)


def _bounded(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    return redact(value)[: _LIMITS[name]]


def _now() -> datetime:
    return datetime.now(UTC)


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_of(row: AuditEventRow) -> dict[str, Any]:
    """A row as a JSON-ready dict, keyed by its columns; time in ISO 8601 UTC ("Z")."""
    event = {name: getattr(row, name) for name in AUDIT_FIELDS}
    event["time"] = format_time(row.time)
    return event


def log_line(event: Mapping[str, Any]) -> str:
    return json.dumps(event, sort_keys=False, separators=(",", ":"), default=str)


def emit(events: Iterable[Mapping[str, Any]]) -> None:
    """Writes each committed event as one JSON line on the `cthm.audit` logger."""
    for event in events:
        audit_log.info("%s", log_line(event))


class AuditLog:
    """Audit rows of one unit of work, written in its transaction.

    `committed_events()` are the rows recorded so far, for the store to log once it committed.
    """

    def __init__(self, session: Session, context: AuditContext | None) -> None:
        self._session = session
        self.context = context
        # Each recorded row's values, by column (AUDIT_FIELDS), for the log after the commit.
        self._recorded: list[dict[str, Any]] = []

    def record(self, **event: Unpack[AuditEvent]) -> None:
        """Adds one row, event_values(**event), to this transaction (flushed now, so a refused
        insert fails the change)."""
        values = self.event_values(**event)
        # A Core INSERT, not an ORM object: a change's audit row is on every write's path, and
        # the ORM's unit-of-work flush costs several times the statement.
        _INSERT_AUDIT.run(self._session.connection(), values)
        self._recorded.append(values)

    def recorded(self, values: dict[str, Any]) -> None:
        """An event of event_values() that the caller inserted in its own statement (one round
        trip with the change it records), to be logged after the commit as record()'s are."""
        self._recorded.append(values)

    def event_values(self, **event: Unpack[AuditEvent]) -> dict[str, Any]:
        """One event's row, by column (AUDIT_FIELDS). Without a context (a change made outside
        a request, and none for this unit), request_id is "" and token_id and project_id are
        None."""
        context = (
            event.get("context")
            or self.context
            or AuditContext(request_id="", token_id=None, project_id=None)
        )
        values: dict[str, Any] = {
            "id": event.get("event_id") or str(uuid.uuid4()),
            "time": event.get("time") or _now(),
            "request_id": _bounded("request_id", context.request_id) or "",
            "token_id": _bounded("token_id", context.token_id),
            "project_id": _bounded("project_id", context.project_id),
            "action": _bounded("action", event["action"]) or "",
            "target_type": _bounded("target_type", event["target_type"]) or "",
            "target_id": _bounded("target_id", event["target_id"]),
            "target_project_id": _bounded("target_project_id", event["target_project_id"]),
            "outcome": Outcome(event.get("outcome", Outcome.SUCCESS)).value,
            "status_code": event.get("status_code", 200),
            "before": event["before"],
            "after": event["after"],
            "detail": _bounded("detail", event.get("detail", "")) or "",
        }
        return values

    def update_summary(self, event_id: str, *, after: dict[str, Any], detail: str) -> bool:
        """Rewrites the `after` and `detail` of the event `event_id` (a summary of repeated
        denials, recounted as they come); False if there is no such event."""
        row = self._session.get(AuditEventRow, event_id)
        if row is None:
            return False
        row.after = after
        row.detail = _bounded("detail", detail) or ""
        self._session.flush()
        self._recorded.append({name: getattr(row, name) for name in AUDIT_FIELDS})
        return True

    def committed_events(self) -> list[dict[str, Any]]:
        """The recorded rows as events; call only after the transaction committed."""
        return [{**values, "time": format_time(values["time"])} for values in self._recorded]

    def list(
        self,
        query: ListQuery,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Events matching `query` with since <= time < until, in the query's order."""
        statement = select(AuditEventRow)
        if since is not None:
            statement = statement.where(AuditEventRow.time >= since)
        if until is not None:
            statement = statement.where(AuditEventRow.time < until)
        statement = apply_query(
            self._session, statement, columns_of(AuditEventRow, AUDIT_FIELDS), query
        )
        return [event_of(row) for row in self._session.scalars(statement)]
