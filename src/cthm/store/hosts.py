"""Several hosts in the store: the change feed, node agents, placement, per-host reports.

Placement is discovery: a router is placed on every host whose agent reports the router's
namespace (agent_namespaces). Each host reports on its routers (router_hosts, binding_hosts);
the routers' and bindings' own status columns hold the aggregate of those reports
(domain.placement.aggregate_status), written here whenever a report, a placement or an agent's
liveness changes. Everything runs inside the caller's unit of work.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from cthm.domain import (
    AgentNotFound,
    AgentRecord,
    AgentReportResult,
    Change,
    HelperBinding,
    HostRouterState,
    HostStatus,
    HostView,
    InvalidInput,
    Router,
    Status,
    aggregate_status,
    is_alive,
    node_agent_id,
    validate_host,
    validate_status_reason,
)
from cthm.store.audit import AuditLog
from cthm.store.desired import restore_desired
from cthm.store.prepared import Prepared
from cthm.store.tables import (
    AgentNamespaceRow,
    AgentRow,
    BindingHostRow,
    BindingRow,
    ChangeLogRow,
    RouterHostRow,
    RouterRow,
    RouterTombstoneRow,
    TombstoneHostRow,
)

# Rows per IN (...) list: well below SQLite's bound on parameters of one statement.
CHUNK = 500
# PostgreSQL: pg_advisory_xact_lock key ("cthm" + "chlg" in ASCII) serializing change-log writers
# from their INSERT to their COMMIT, and the channel NOTIFY tells listeners of a new revision.
CHANGE_LOG_LOCK_KEY = 0x6374686D_63686C67
CHANGE_CHANNEL = "cthm_changes"
# The change log is pruned when a revision crosses a multiple of this (or of `keep`, if smaller):
# one DELETE now and then rather than one per unit of work.
PRUNE_EVERY = 100

_STATUSES = {s.value: s for s in Status}

# The change log's writes, built once (a statement built per call is compiled per call).
_CHANGE_LOG = cast(Table, ChangeLogRow.__table__)
_LOCK_CHANGE_LOG = select(func.pg_advisory_xact_lock(literal(CHANGE_LOG_LOCK_KEY, BigInteger)))
_WRITE = insert(_CHANGE_LOG).returning(_CHANGE_LOG.c.revision)
_WRITE_ONE = Prepared(_WRITE)  # SQLite's single-router write, on the driver (store/prepared.py)
# PostgreSQL, one row: the change-log lock taken, the row written and NOTIFYed (its revision,
# delivered at the commit), all in one statement. The row's revision (the sequence's nextval, a
# default of the INSERT's own projection) is taken only once the row is read from `locked`,
# that is after the lock is granted: as with the lock taken by a statement of its own.
_LOCKED = (
    select(func.pg_advisory_xact_lock(literal(CHANGE_LOG_LOCK_KEY, BigInteger)).label("locked"))
    .cte("locked")
    .prefix_with("MATERIALIZED")
)
_CHANGE_COLUMNS = ("router_id", "namespace", "kind", "time")
_WRITTEN = (
    insert(_CHANGE_LOG)
    .from_select(
        list(_CHANGE_COLUMNS),
        select(
            *(bindparam(name, type_=_CHANGE_LOG.c[name].type) for name in _CHANGE_COLUMNS)
        ).select_from(_LOCKED),
    )
    .returning(_CHANGE_LOG.c.revision)
    .cte("written")
)
_WRITE_ONE_AND_NOTIFY = select(
    func.min(_WRITTEN.c.revision),
    func.max(_WRITTEN.c.revision),
    func.pg_notify(CHANGE_CHANNEL, cast_(func.max(_WRITTEN.c.revision), Text)),
)
_T = TypeVar("_T")

_BINDING_COLUMNS = (
    BindingRow.id,
    BindingRow.project_id,
    BindingRow.protocol,
    BindingRow.port,
    BindingRow.helper,
    BindingRow.direction,
)


def _chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _status(value: object) -> Status | None:
    return _STATUSES.get(value) if isinstance(value, str) else None


def write_change_log(
    session: Session, changes: Mapping[str, tuple[str, str]], keep: int, now: datetime
) -> tuple[int, int] | None:
    """One row per changed router (router id -> (namespace, kind)) in one INSERT; prunes the
    log to about the newest `keep` rows when the head crosses a multiple of PRUNE_EVERY.

    Called just before the commit. Watchers read `revision > since`, so revisions must become
    visible in order: SQLite's writers are serialized already; on PostgreSQL a sequence value
    taken by a transaction that commits after one with a bigger value would be skipped, so
    change-log writers take a transaction lock first and hold it until their commit. The same
    transaction NOTIFYs the new head (delivered at commit, to every replica's listener).
    Returns the first and last revision written (None: none)."""
    if not changes:
        return None
    connection = session.connection()
    postgresql = connection.dialect.name == "postgresql"
    rows = [
        {"router_id": router_id, "namespace": namespace, "kind": kind, "time": now}
        for router_id, (namespace, kind) in changes.items()
    ]
    if postgresql and len(rows) == 1:
        # The lock, the INSERT and its NOTIFY in one statement: two round trips fewer on
        # every single-router write.
        first, last, _ = connection.execute(_WRITE_ONE_AND_NOTIFY, rows[0]).one()
    elif not postgresql and len(rows) == 1:
        (written,) = _WRITE_ONE.rows(connection, rows[0])
        first = last = written.revision
    else:
        if postgresql:
            connection.execute(_LOCK_CHANGE_LOG)
        revisions = list(connection.execute(_WRITE, rows).scalars())
        first, last = min(revisions), max(revisions)
        if postgresql:
            # Only the revision (NOTIFY payloads are limited): listeners re-read by revision.
            connection.execute(select(func.pg_notify(CHANGE_CHANNEL, str(last))))
    prune_change_log(connection, first, last, keep)
    return first, last


def prune_change_log(connection: Connection, first: int, last: int, keep: int) -> None:
    """After revisions first..last were written: the log pruned to about the newest `keep`
    rows when the head crossed a multiple of PRUNE_EVERY (or of `keep`, if smaller)."""
    every = max(1, min(PRUNE_EVERY, keep))
    if last // every != (first - 1) // every:
        connection.execute(delete(_CHANGE_LOG).where(_CHANGE_LOG.c.revision <= last - keep))


def _agent(row: AgentRow) -> AgentRecord:
    return AgentRecord(
        id=row.id,
        host=row.host,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        created_at=row.created_at,
        configurations=dict(row.configurations or {}),
        registered_by=row.registered_by,
    )


def _unchecked_router(**values: Any) -> Router:
    """A Router holding a row's values as they are, for a row that fails validation: the
    caller still names it (id, revision) while refusing to act on it."""
    router = object.__new__(Router)
    for name, value in values.items():
        object.__setattr__(router, name, value)
    return router


class HostRepository:
    """Change feed, node agents and per-host state within one unit of work."""

    def __init__(self, session: Session, audit: AuditLog) -> None:
        self._session = session
        self._audit = audit

    # --- change feed ---------------------------------------------------------------------

    def head_revision(self) -> int:
        """The newest revision (0 when nothing changed yet)."""
        return int(self._session.scalar(select(func.max(ChangeLogRow.revision))) or 0)

    def oldest_revision(self) -> int | None:
        """The oldest revision still retained (None: the log is empty)."""
        value = self._session.scalar(select(func.min(ChangeLogRow.revision)))
        return None if value is None else int(value)

    def changes_since(
        self, since: int, namespaces: Collection[str] | None, limit: int
    ) -> list[Change]:
        """Changes after `since` in ascending order, at most `limit`, only those of routers in
        `namespaces` (None: all)."""
        statement = select(
            ChangeLogRow.revision, ChangeLogRow.router_id, ChangeLogRow.namespace, ChangeLogRow.kind
        ).where(ChangeLogRow.revision > since)
        if namespaces is not None:
            if not namespaces:
                return []
            statement = statement.where(ChangeLogRow.namespace.in_(list(namespaces)))
        rows = self._session.execute(statement.order_by(ChangeLogRow.revision).limit(limit))
        return [Change(rev, router_id, ns, kind) for rev, router_id, ns, kind in rows]

    # --- agents --------------------------------------------------------------------------

    def record_agent_report(
        self,
        *,
        host: str,
        started_at: datetime | None,
        namespaces: Sequence[str],
        configurations: Mapping[str, Any],
        kernel: Sequence[Mapping[str, Any]],
        token_id: str | None,
        now: datetime,
        down_time: float,
    ) -> AgentReportResult:
        """Registration, heartbeat and discovery in one: see the module docstring."""
        host = validate_host(host)
        agent_id = node_agent_id(host)
        row = self._session.get(AgentRow, agent_id)
        created = row is None
        came_back = False
        if row is None:
            row = AgentRow(
                id=agent_id,
                host=host,
                started_at=started_at,
                heartbeat_at=now,
                created_at=now,
                configurations=dict(configurations),
                registered_by=token_id,
                alive_noted=True,
            )
            self._session.add(row)
        else:
            # A dead agent's routers say so; its return must clear that at once.
            came_back = not is_alive(row.heartbeat_at, now, down_time) or not row.alive_noted
            row.started_at = started_at
            row.heartbeat_at = now
            row.configurations = dict(configurations)
            row.alive_noted = True
        if created or row.registered_by != token_id:
            row.registered_by = token_id
            self._audit.record(
                action="register_agent",
                target_type="agent",
                target_id=agent_id,
                target_project_id=None,
                before=None,
                after={"id": agent_id, "host": host, "registered_by": token_id},
                status_code=200,
                detail=f"host {host} registered by token {token_id}",
            )
        self._session.flush()

        affected = self._set_namespaces(host, set(namespaces))
        placed = self._placed_on(host)
        if came_back:
            affected.update(router_id for router_id, _, _ in placed)
        self._store_kernel(host, {router_id for router_id, _, _ in placed}, kernel, now)
        self._recompute(sorted(affected), now, down_time)
        return AgentReportResult(agent=_agent(row), created=created, placed=placed)

    def agents(self) -> list[AgentRecord]:
        return [
            _agent(row) for row in self._session.scalars(select(AgentRow).order_by(AgentRow.host))
        ]

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        row = self._session.get(AgentRow, agent_id)
        return None if row is None else _agent(row)

    def forget_agent(self, agent_id: str, *, now: datetime, down_time: float) -> AgentRecord:
        """Deletes a node agent and everything of its host (namespaces, reports, pending table
        removals); the statuses of its routers are recomputed without it."""
        row = self._session.get(AgentRow, agent_id)
        if row is None:
            raise AgentNotFound(agent_id)
        record = _agent(row)
        host = row.host
        routers = {router_id for router_id, _, _ in self._placed_on(host)}
        routers.update(
            self._session.scalars(select(RouterHostRow.router_id).where(RouterHostRow.host == host))
        )
        tombstoned = list(
            self._session.scalars(
                select(TombstoneHostRow.router_id).where(TombstoneHostRow.host == host)
            )
        )
        for model in (AgentNamespaceRow, RouterHostRow, BindingHostRow, TombstoneHostRow):
            self._session.execute(delete(model).where(model.host == host))
        for chunk in _chunks(tombstoned):
            self._drop_cleared_tombstones(chunk)
        self._session.delete(row)
        self._session.flush()
        self._recompute(sorted(routers), now, down_time)
        self._audit.record(
            action="delete_agent",
            target_type="agent",
            target_id=agent_id,
            target_project_id=None,
            before={"id": agent_id, "host": host, "registered_by": record.registered_by},
            after=None,
            status_code=204,
            detail=f"host {host} forgotten",
        )
        return record

    def liveness_flips(self, now: datetime, down_time: float) -> list[tuple[str, str, bool]]:
        """(agent id, host, alive now) of the agents whose liveness changed since it was last
        noted: a read, so a caller can skip the write transaction when there are none."""
        rows = self._session.execute(
            select(AgentRow.id, AgentRow.host, AgentRow.heartbeat_at, AgentRow.alive_noted)
        ).all()
        return [
            (agent_id, host, alive)
            for agent_id, host, heartbeat_at, noted in rows
            if (alive := is_alive(heartbeat_at, now, down_time)) != bool(noted)
        ]

    def refresh_liveness(self, now: datetime, down_time: float) -> list[str]:
        """Agents whose liveness changed since the last call: their routers' (and bindings')
        statuses are recomputed. Returns the recomputed router ids."""
        flipped = self.liveness_flips(now, down_time)
        if not flipped:
            return []
        table = cast(Table, AgentRow.__table__)
        self._session.connection().execute(
            update(table)
            .where(table.c.id == bindparam("a_id"))
            .values(alive_noted=bindparam("a_alive")),
            [{"a_id": agent_id, "a_alive": alive} for agent_id, _, alive in flipped],
        )
        routers: set[str] = set()
        for _, host, _ in flipped:
            routers.update(router_id for router_id, _, _ in self._placed_on(host))
        ordered = sorted(routers)
        self._recompute(ordered, now, down_time)
        return ordered

    # --- placement -----------------------------------------------------------------------

    def host_namespaces(self, host: str) -> set[str]:
        return set(
            self._session.scalars(
                select(AgentNamespaceRow.namespace).where(AgentNamespaceRow.host == host)
            )
        )

    def placement(self, router_ids: Iterable[str]) -> dict[str, list[str]]:
        """Router id -> the hosts placing it, sorted ([] when none)."""
        ids = list(dict.fromkeys(router_ids))
        result: dict[str, list[str]] = {router_id: [] for router_id in ids}
        for chunk in _chunks(ids):
            rows = self._session.execute(
                select(RouterRow.id, AgentNamespaceRow.host)
                .join(AgentNamespaceRow, AgentNamespaceRow.namespace == RouterRow.namespace)
                .where(RouterRow.id.in_(chunk))
                .order_by(AgentNamespaceRow.host)
            )
            for router_id, host in rows:
                result[router_id].append(host)
        return result

    def host_view(self, host: str, router_id: str) -> HostView | None:
        """The router as `host`'s agent needs it (None: no such router, or not placed on the
        host). Two queries: the router with this host's report, its bindings with theirs."""
        row = self._session.execute(
            self._router_view_query(host).where(RouterRow.id == router_id)
        ).first()
        if row is None:
            return None
        view = self._router_view(row)
        if view.invalid is not None:
            return view
        bindings, rejected = self._binding_views(host, [router_id]).get(router_id, ([], []))
        return HostView(view.router, tuple(bindings), tuple(rejected))

    def host_views(self, host: str) -> list[HostView]:
        """Every router placed on `host`, by id, as host_view gives each (two queries)."""
        views = [
            self._router_view(row)
            for row in self._session.execute(self._router_view_query(host).order_by(RouterRow.id))
        ]
        bindings = self._binding_views(host, None)
        result = []
        for view in views:
            if view.invalid is not None:
                result.append(view)
                continue
            found, rejected = bindings.get(view.router.id, ([], []))
            result.append(HostView(view.router, tuple(found), tuple(rejected)))
        return result

    def host_states(
        self, router_id: str, *, now: datetime, down_time: float
    ) -> list[HostRouterState]:
        """One entry per host placing the router, by host name: its agent and last report."""
        return self.host_states_of([router_id], now=now, down_time=down_time)[router_id]

    def host_states_of(
        self, router_ids: Iterable[str], *, now: datetime, down_time: float
    ) -> dict[str, list[HostRouterState]]:
        """host_states() of many routers (router id -> its entries, [] when none), one query
        per chunk of ids: the bulk kernel_states listing never asks router by router."""
        ids = list(dict.fromkeys(router_ids))
        result: dict[str, list[HostRouterState]] = {router_id: [] for router_id in ids}
        for chunk in _chunks(ids):
            rows = self._session.execute(
                select(
                    RouterRow.id,
                    AgentNamespaceRow.host,
                    AgentRow.id,
                    AgentRow.heartbeat_at,
                    RouterHostRow.revision_number,
                    RouterHostRow.status,
                    RouterHostRow.status_reason,
                    RouterHostRow.kernel,
                    RouterHostRow.updated_at,
                )
                .select_from(RouterRow)
                .join(AgentNamespaceRow, AgentNamespaceRow.namespace == RouterRow.namespace)
                .outerjoin(AgentRow, AgentRow.host == AgentNamespaceRow.host)
                .outerjoin(
                    RouterHostRow,
                    and_(
                        RouterHostRow.router_id == RouterRow.id,
                        RouterHostRow.host == AgentNamespaceRow.host,
                    ),
                )
                .where(RouterRow.id.in_(chunk))
                .order_by(AgentNamespaceRow.host)
            )
            for row in rows:
                (rid, host, agent_id, heartbeat_at, revision, status, reason, kernel, updated) = row
                result[rid].append(
                    HostRouterState(
                        host=host,
                        agent_id=agent_id or node_agent_id(host),
                        alive=is_alive(heartbeat_at, now, down_time),
                        heartbeat_at=heartbeat_at,
                        revision_number=revision,
                        status=_status(status),
                        reason=reason or "",
                        kernel=kernel,
                        updated_at=updated,
                    )
                )
        return result

    # --- reports -------------------------------------------------------------------------

    def record_host_report(
        self,
        host: str,
        *,
        router_id: str,
        revision_number: int,
        status: Status,
        reason: str,
        bindings: Sequence[tuple[str, int, Status, str]],
        kernel: Mapping[str, Any] | None,
        now: datetime,
        down_time: float,
    ) -> bool:
        """Stores `host`'s report on the router (and its bindings: others are ignored), then
        writes the aggregate statuses. False: the router is not placed on the host. A report
        older than the one stored (a lower revision) does not replace it."""
        placed = self._session.execute(
            select(RouterRow.id)
            .join(
                AgentNamespaceRow,
                and_(
                    AgentNamespaceRow.namespace == RouterRow.namespace,
                    AgentNamespaceRow.host == host,
                ),
            )
            .where(RouterRow.id == router_id)
        ).first()
        if placed is None:
            return False
        reason = validate_status_reason(reason)
        report = self._session.get(RouterHostRow, (router_id, host))
        if report is None:
            self._session.add(
                RouterHostRow(
                    router_id=router_id,
                    host=host,
                    revision_number=revision_number,
                    status=status.value,
                    status_reason=reason,
                    kernel=None if kernel is None else dict(kernel),
                    updated_at=now,
                )
            )
        elif report.revision_number is None or revision_number >= report.revision_number:
            report.revision_number = revision_number
            report.status = status.value
            report.status_reason = reason
            report.updated_at = now
            if kernel is not None:
                report.kernel = dict(kernel)
        self._store_binding_reports(host, router_id, bindings, now)
        self._session.flush()
        self._recompute([router_id], now, down_time)
        return True

    # --- tombstones ----------------------------------------------------------------------

    def host_tombstones(self, host: str) -> dict[str, str]:
        """Deleted routers whose table `host` has not yet removed: router id -> namespace."""
        rows = self._session.execute(
            select(TombstoneHostRow.router_id, RouterTombstoneRow.namespace)
            .join(RouterTombstoneRow, RouterTombstoneRow.router_id == TombstoneHostRow.router_id)
            .where(TombstoneHostRow.host == host)
        )
        return {router_id: namespace for router_id, namespace in rows}

    def clear_host_tombstone(self, host: str, router_id: str) -> None:
        """Idempotent. The router's own tombstone goes with its last host's."""
        self._session.execute(
            delete(TombstoneHostRow).where(
                TombstoneHostRow.router_id == router_id, TombstoneHostRow.host == host
            )
        )
        self._drop_cleared_tombstones([router_id])

    # --- internals -----------------------------------------------------------------------

    def _drop_cleared_tombstones(self, router_ids: Sequence[str]) -> None:
        self._session.execute(
            delete(RouterTombstoneRow).where(
                RouterTombstoneRow.router_id.in_(list(router_ids)),
                ~exists().where(TombstoneHostRow.router_id == RouterTombstoneRow.router_id),
            )
        )

    def _set_namespaces(self, host: str, namespaces: set[str]) -> set[str]:
        """Replaces the host's namespaces; returns the routers whose placement changed (this
        host's reports on routers it no longer places are deleted)."""
        old = self.host_namespaces(host)
        gained, lost = sorted(namespaces - old), sorted(old - namespaces)
        if not gained and not lost:
            return set()
        for chunk in _chunks(lost):
            self._session.execute(
                delete(AgentNamespaceRow).where(
                    AgentNamespaceRow.host == host, AgentNamespaceRow.namespace.in_(chunk)
                )
            )
        if gained:
            self._session.execute(
                insert(AgentNamespaceRow), [{"host": host, "namespace": ns} for ns in gained]
            )
        affected: set[str] = set()
        for chunk in _chunks(gained + lost):
            affected.update(
                self._session.scalars(select(RouterRow.id).where(RouterRow.namespace.in_(chunk)))
            )
        lost_routers: list[str] = []
        for chunk in _chunks(lost):
            lost_routers.extend(
                self._session.scalars(select(RouterRow.id).where(RouterRow.namespace.in_(chunk)))
            )
        for chunk in _chunks(lost_routers):
            for model in (RouterHostRow, BindingHostRow):
                self._session.execute(
                    delete(model).where(model.host == host, model.router_id.in_(chunk))
                )
        return affected

    def _placed_on(self, host: str) -> list[tuple[str, str, int]]:
        rows = self._session.execute(
            select(RouterRow.id, RouterRow.namespace, RouterRow.revision_number)
            .join(
                AgentNamespaceRow,
                and_(
                    AgentNamespaceRow.namespace == RouterRow.namespace,
                    AgentNamespaceRow.host == host,
                ),
            )
            .order_by(RouterRow.id)
        )
        return [(router_id, namespace, revision) for router_id, namespace, revision in rows]

    def _store_kernel(
        self,
        host: str,
        placed: set[str],
        kernel: Sequence[Mapping[str, Any]],
        now: datetime,
    ) -> None:
        """Kernel summaries of routers placed on the host (others ignored) into its reports."""
        summaries = {
            summary["router_id"]: dict(summary)
            for summary in kernel
            if isinstance(summary.get("router_id"), str) and summary["router_id"] in placed
        }
        if not summaries:
            return
        existing = set(
            self._session.scalars(select(RouterHostRow.router_id).where(RouterHostRow.host == host))
        )
        table = cast(Table, RouterHostRow.__table__)
        updates = [
            {"k_router": router_id, "k_kernel": summary}
            for router_id, summary in summaries.items()
            if router_id in existing
        ]
        if updates:
            self._session.connection().execute(
                update(table)
                .where(table.c.router_id == bindparam("k_router"), table.c.host == host)
                .values(kernel=bindparam("k_kernel")),
                updates,
            )
        inserts = [
            {
                "router_id": router_id,
                "host": host,
                "revision_number": None,
                "status": None,
                "status_reason": "",
                "kernel": summary,
                "updated_at": now,
            }
            for router_id, summary in summaries.items()
            if router_id not in existing
        ]
        if inserts:
            self._session.connection().execute(insert(table), inserts)

    def _store_binding_reports(
        self,
        host: str,
        router_id: str,
        bindings: Sequence[tuple[str, int, Status, str]],
        now: datetime,
    ) -> None:
        if not bindings:
            return
        own = set(
            self._session.scalars(select(BindingRow.id).where(BindingRow.router_id == router_id))
        )
        stored: dict[str, int] = {
            b_id: revision
            for b_id, revision in self._session.execute(
                select(BindingHostRow.binding_id, BindingHostRow.revision_number).where(
                    BindingHostRow.router_id == router_id, BindingHostRow.host == host
                )
            )
        }
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        for b_id, revision, status, reason in bindings:
            if b_id not in own:
                continue
            values = {
                "revision_number": revision,
                "status": status.value,
                "status_reason": validate_status_reason(reason),
                "updated_at": now,
            }
            if b_id not in stored:
                inserts.append({"binding_id": b_id, "host": host, "router_id": router_id, **values})
                stored[b_id] = revision
            elif revision >= stored[b_id]:
                updates.append({"b_id": b_id, **{f"b_{k}": v for k, v in values.items()}})
        table = cast(Table, BindingHostRow.__table__)
        if updates:
            self._session.connection().execute(
                update(table)
                .where(table.c.binding_id == bindparam("b_id"), table.c.host == host)
                .values(
                    revision_number=bindparam("b_revision_number"),
                    status=bindparam("b_status"),
                    status_reason=bindparam("b_status_reason"),
                    updated_at=bindparam("b_updated_at"),
                ),
                updates,
            )
        if inserts:
            self._session.connection().execute(insert(table), inserts)

    def _router_view_query(self, host: str) -> Any:
        return (
            select(
                RouterRow.id,
                RouterRow.name,
                RouterRow.project_id,
                RouterRow.namespace,
                RouterRow.revision_number,
                RouterHostRow.revision_number,
                RouterHostRow.status,
                RouterHostRow.status_reason,
            )
            .join(
                AgentNamespaceRow,
                and_(
                    AgentNamespaceRow.namespace == RouterRow.namespace,
                    AgentNamespaceRow.host == host,
                ),
            )
            .outerjoin(
                RouterHostRow,
                and_(RouterHostRow.router_id == RouterRow.id, RouterHostRow.host == host),
            )
        )

    @staticmethod
    def _router_view(row: Any) -> HostView:
        router_id, name, project_id, namespace, revision, reported, status, reason = row
        own = _status(status) if reported == revision else None
        values = {
            "id": router_id,
            "name": name,
            "project_id": project_id,
            "namespace": namespace,
            "status": own or Status.PENDING,
            "status_reason": (reason or "") if own is not None else "",
            "revision_number": revision,
            "created_at": None,
            "updated_at": None,
        }
        try:
            return HostView(Router(**values), (), ())
        except InvalidInput as exc:  # the row was edited behind the API's back
            return HostView(_unchecked_router(**values), (), (), invalid=f"refused: {exc.message}")

    def _binding_views(
        self, host: str, router_ids: list[str] | None
    ) -> dict[str, tuple[list[HelperBinding], list[tuple[str, int, str]]]]:
        """Bindings of the given routers (None: of every router placed on host) with this
        host's status at their current revision, grouped by router, each in desired order."""
        statement = select(
            BindingRow.router_id,
            *_BINDING_COLUMNS,
            BindingRow.revision_number,
            BindingHostRow.revision_number,
            BindingHostRow.status,
            BindingHostRow.status_reason,
        ).outerjoin(
            BindingHostRow,
            and_(BindingHostRow.binding_id == BindingRow.id, BindingHostRow.host == host),
        )
        if router_ids is None:
            statement = statement.join(RouterRow, RouterRow.id == BindingRow.router_id).join(
                AgentNamespaceRow,
                and_(
                    AgentNamespaceRow.namespace == RouterRow.namespace,
                    AgentNamespaceRow.host == host,
                ),
            )
        else:
            statement = statement.where(BindingRow.router_id.in_(router_ids))
        statement = statement.order_by(
            BindingRow.router_id, BindingRow.protocol, BindingRow.port, BindingRow.direction
        )
        grouped: dict[str, list[tuple[Any, ...]]] = {}
        for row in self._session.execute(statement):
            router_id, b_id, project_id, protocol, port, helper, direction = row[:7]
            revision, reported, status, reason = row[7:]
            own = reported == revision and _status(status) is not None
            grouped.setdefault(router_id, []).append(
                (
                    b_id,
                    project_id,
                    protocol,
                    port,
                    helper,
                    direction,
                    status if own else Status.PENDING.value,
                    (reason or "") if own else "",
                    revision,
                )
            )
        return {router_id: restore_desired(router_id, rows) for router_id, rows in grouped.items()}

    def _recompute(self, router_ids: Sequence[str], now: datetime, down_time: float) -> None:
        """Writes the aggregate status of these routers and of their bindings (only where it
        changed), each guarded by the revision it was computed for."""
        for chunk in _chunks(router_ids):
            self._recompute_chunk(chunk, now, down_time)

    def _recompute_chunk(self, router_ids: Sequence[str], now: datetime, down_time: float) -> None:
        ids = list(router_ids)
        routers = self._session.execute(
            select(
                RouterRow.id,
                RouterRow.namespace,
                RouterRow.revision_number,
                RouterRow.status,
                RouterRow.status_reason,
            ).where(RouterRow.id.in_(ids))
        ).all()
        if not routers:
            return
        # namespace -> [(host, heartbeat)] of the hosts placing it
        placing: dict[str, list[tuple[str, datetime | None]]] = {}
        for namespace, host, heartbeat_at in self._session.execute(
            select(AgentNamespaceRow.namespace, AgentNamespaceRow.host, AgentRow.heartbeat_at)
            .outerjoin(AgentRow, AgentRow.host == AgentNamespaceRow.host)
            .where(AgentNamespaceRow.namespace.in_([r.namespace for r in routers]))
        ):
            placing.setdefault(namespace, []).append((host, heartbeat_at))
        reports: dict[tuple[str, str], tuple[int | None, str | None, str]] = {
            (router_id, host): (revision, status, reason)
            for router_id, host, revision, status, reason in self._session.execute(
                select(
                    RouterHostRow.router_id,
                    RouterHostRow.host,
                    RouterHostRow.revision_number,
                    RouterHostRow.status,
                    RouterHostRow.status_reason,
                ).where(RouterHostRow.router_id.in_(ids))
            )
        }
        router_updates: list[dict[str, Any]] = []
        for router_id, namespace, revision, old_status, old_reason in routers:
            hosts = placing.get(namespace, [])
            statuses = [
                self._host_status(
                    host, heartbeat_at, reports.get((router_id, host)), now, down_time
                )
                for host, heartbeat_at in hosts
            ]
            status, reason = aggregate_status(revision, statuses, what=f"namespace {namespace}")
            if (status.value, reason) != (old_status, old_reason):
                router_updates.append(
                    {
                        "r_id": router_id,
                        "r_rev": revision,
                        "r_status": status.value,
                        "r_reason": reason,
                    }
                )
        if router_updates:
            table = cast(Table, RouterRow.__table__)
            self._session.connection().execute(
                update(table)
                .where(
                    table.c.id == bindparam("r_id"), table.c.revision_number == bindparam("r_rev")
                )
                .values(status=bindparam("r_status"), status_reason=bindparam("r_reason")),
                router_updates,
            )
        self._recompute_bindings(
            ids, {r.id: placing.get(r.namespace, []) for r in routers}, now, down_time
        )

    def _recompute_bindings(
        self,
        router_ids: list[str],
        placing: Mapping[str, list[tuple[str, datetime | None]]],
        now: datetime,
        down_time: float,
    ) -> None:
        bindings = self._session.execute(
            select(
                BindingRow.id,
                BindingRow.router_id,
                BindingRow.revision_number,
                BindingRow.status,
                BindingRow.status_reason,
            ).where(BindingRow.router_id.in_(router_ids))
        ).all()
        if not bindings:
            return
        reports: dict[tuple[str, str], tuple[int | None, str | None, str]] = {
            (b_id, host): (revision, status, reason)
            for b_id, host, revision, status, reason in self._session.execute(
                select(
                    BindingHostRow.binding_id,
                    BindingHostRow.host,
                    BindingHostRow.revision_number,
                    BindingHostRow.status,
                    BindingHostRow.status_reason,
                ).where(BindingHostRow.router_id.in_(router_ids))
            )
        }
        updates: list[dict[str, Any]] = []
        for b_id, router_id, revision, old_status, old_reason in bindings:
            statuses = [
                self._host_status(host, heartbeat_at, reports.get((b_id, host)), now, down_time)
                for host, heartbeat_at in placing.get(router_id, [])
            ]
            status, reason = aggregate_status(revision, statuses, what="")
            if (status.value, reason) != (old_status, old_reason):
                updates.append(
                    {"b_id": b_id, "b_rev": revision, "b_status": status.value, "b_reason": reason}
                )
        if updates:
            table = cast(Table, BindingRow.__table__)
            self._session.connection().execute(
                update(table)
                .where(
                    table.c.id == bindparam("b_id"), table.c.revision_number == bindparam("b_rev")
                )
                .values(status=bindparam("b_status"), status_reason=bindparam("b_reason")),
                updates,
            )

    @staticmethod
    def _host_status(
        host: str,
        heartbeat_at: datetime | None,
        report: tuple[int | None, str | None, str] | None,
        now: datetime,
        down_time: float,
    ) -> HostStatus:
        revision, status, reason = report if report is not None else (None, None, "")
        return HostStatus(
            host=host,
            revision_number=revision,
            status=_status(status),
            reason=reason or "",
            alive=is_alive(heartbeat_at, now, down_time),
            heartbeat_at=heartbeat_at,
        )
