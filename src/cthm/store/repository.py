"""Repository over one session: reads and writes routers and bindings as domain objects."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from itertools import chain
from types import SimpleNamespace
from typing import Any, NamedTuple, NoReturn, TypeVar, cast

from sqlalchemy import (
    BigInteger,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    true,
    update,
)
from sqlalchemy import cast as cast_
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from cthm.domain import (
    BINDING_FIELDS,
    CHANGE_DELETED,
    CHANGE_MODIFIED,
    CHANGE_RESYNC,
    UNLIMITED,
    AuthToken,
    BindingConflict,
    BindingNotFound,
    BindingQuota,
    Conflict,
    Direction,
    HelperBinding,
    InvalidInput,
    ListQuery,
    NamespaceInUse,
    OverQuota,
    Protocol,
    Router,
    RouterExists,
    RouterNotFound,
    Status,
    restore_binding,
    validate_status_reason,
)
from cthm.store.audit import AUDIT_FIELDS, AuditContext, AuditLog
from cthm.store.census import bindings_by_status, routers_by_status
from cthm.store.deployment import create_deployment_id, read_deployment_id
from cthm.store.desired import restore_all_desired, restore_desired
from cthm.store.hosts import (
    CHANGE_CHANNEL,
    CHANGE_LOG_LOCK_KEY,
    HostRepository,
    prune_change_log,
    write_change_log,
)
from cthm.store.listing import apply_query, columns_of
from cthm.store.prepared import Prepared
from cthm.store.revisions import RevisionNote
from cthm.store.tables import (
    AgentNamespaceRow,
    AuditEventRow,
    BindingHostRow,
    BindingRow,
    ChangeLogRow,
    RouterHostRow,
    RouterRow,
    RouterTombstoneRow,
    TombstoneHostRow,
)
from cthm.store.tokens import TokenStore

_Audited = TypeVar("_Audited", Router, HelperBinding)

ROUTER_FIELDS = (
    "id",
    "name",
    "project_id",
    "namespace",
    "status",
    "status_reason",
    "revision_number",
    "created_at",
    "updated_at",
)


_ROUTERS = cast(Table, RouterRow.__table__)
_BINDINGS = cast(Table, BindingRow.__table__)


# The binding write path's statements, built once (building one costs about as much as running
# it); run on the session's connection, past the ORM's execute machinery.
_ROUTER_HEAD = select(
    _ROUTERS.c.id, _ROUTERS.c.project_id, _ROUTERS.c.namespace, _ROUTERS.c.revision_number
).where(_ROUTERS.c.id == bindparam("b_router"))
_ROUTER_HEAD_LOCKED = _ROUTER_HEAD.with_for_update()
_ROUTER = select(*(_ROUTERS.c[name] for name in ROUTER_FIELDS)).where(
    _ROUTERS.c.id == bindparam("b_router")
)
_ROUTER_ROWS = select(*(_ROUTERS.c[name] for name in ROUTER_FIELDS)).order_by(_ROUTERS.c.id)
_TAKEN = select(_BINDINGS.c.id).where(
    _BINDINGS.c.router_id == bindparam("b_router"),
    _BINDINGS.c.protocol == bindparam("b_protocol"),
    _BINDINGS.c.port == bindparam("b_port"),
    _BINDINGS.c.direction == bindparam("b_direction"),
)
_TAKEN_BY_ANOTHER = _TAKEN.where(_BINDINGS.c.id != bindparam("b_exclude"))
_INSERT_BINDING = Prepared(insert(_BINDINGS))
_BUMP_ROUTER = (
    update(_ROUTERS)
    .where(_ROUTERS.c.id == bindparam("b_router"))
    .values(revision_number=bindparam("b_revision"), updated_at=bindparam("b_now"))
)
# A binding create's router: its revision + 1, what the create needs of it returned, and (not
# on SQLite, whose writer holds the database) the row locked until the commit: one statement
# for what was a locked SELECT and an UPDATE.
_BUMP_ROUTER_RETURNING = (
    update(_ROUTERS)
    .where(_ROUTERS.c.id == bindparam("b_router"))
    .values(revision_number=_ROUTERS.c.revision_number + 1, updated_at=bindparam("b_now"))
    .returning(
        _ROUTERS.c.id, _ROUTERS.c.project_id, _ROUTERS.c.namespace, _ROUTERS.c.revision_number
    )
)
_BUMP_ROUTER_PREPARED = Prepared(_BUMP_ROUTER_RETURNING)


class _CreateCtes(NamedTuple):
    bumped: Any  # the router's row, its revision + 1 (locked until the commit)
    inserted: Any  # the binding's row
    audited: Any  # its audit event's row


def _create_ctes() -> _CreateCtes:
    """PostgreSQL: _BUMP_ROUTER_RETURNING, the binding's INSERT and its audit event's, as the
    CTEs of one statement: the binding takes its router and project from the bumped row, so none
    is inserted when the router is gone; a binding holding the port fails the whole statement.
    Parameters: b_router, b_now, v_<column> for the binding's other columns and a_<column> for
    the audit event's."""
    bumped = _BUMP_ROUTER_RETURNING.cte("bumped")
    names = [name for name in BINDING_FIELDS if name not in ("router_id", "project_id")]
    inserted = (
        insert(_BINDINGS)
        .from_select(
            ["router_id", "project_id", *names],
            select(
                bumped.c.id,
                bumped.c.project_id,
                *(bindparam(f"v_{name}", type_=_BINDINGS.c[name].type) for name in names),
            ),
        )
        .returning(_BINDINGS.c.id)
        .cte("inserted")
    )
    events = cast(Table, AuditEventRow.__table__)
    audited = (
        insert(events)
        .values({name: bindparam(f"a_{name}", type_=events.c[name].type) for name in AUDIT_FIELDS})
        .cte("audited")
    )
    return _CreateCtes(bumped, inserted, audited)


def _bump_and_insert() -> Any:
    """_create_ctes' in one statement (one round trip) returning the bumped router's columns."""
    bumped, inserted, audited = _create_ctes()
    # add_cte: the INSERTs run though the SELECT does not read them.
    return select(*bumped.c).add_cte(inserted, audited)


def _bump_insert_and_log() -> Any:
    """_bump_and_insert, and the router's change-log row (hosts.write_change_log's one-row
    statement) in the same statement: one round trip fewer, for a create that is the last change
    of its unit of work. The change-log lock is taken once the binding's row is in (`locked`
    reads `inserted`): after every row lock the create takes, and after a wait for a concurrent
    insert of the same port, as when it was taken by a statement of its own just before the
    commit; so no writer holds it while waiting for another one. The row's revision (the
    sequence's nextval) is taken once the lock is granted. Returns the bumped router's columns,
    the revision written (`revision`) and the NOTIFY's result; no row if the router is gone.
    Parameters: _create_ctes', and c_kind for the change's kind."""
    bumped, inserted, audited = _create_ctes()
    locked = (
        select(func.pg_advisory_xact_lock(literal(CHANGE_LOG_LOCK_KEY, BigInteger)).label("locked"))
        .select_from(inserted)
        .cte("locked")
        .prefix_with("MATERIALIZED")
    )
    log = cast(Table, ChangeLogRow.__table__)
    written = (
        insert(log)
        .from_select(
            ["router_id", "namespace", "kind", "time"],
            select(
                bumped.c.id,
                bumped.c.namespace,
                bindparam("c_kind", type_=log.c.kind.type),
                bindparam("b_now", type_=log.c.time.type),
            ).select_from(bumped.join(locked, true())),
        )
        .returning(log.c.revision)
        .cte("written")
    )
    return (
        select(
            *bumped.c,
            written.c.revision.label("revision"),
            func.pg_notify(CHANGE_CHANNEL, cast_(written.c.revision, Text)).label("notified"),
        )
        .select_from(bumped.join(written, true()))
        .add_cte(inserted, audited, locked, written)
    )


_BUMP_AND_INSERT_BINDING = _bump_and_insert()
_BUMP_INSERT_AND_LOG_BINDING = _bump_insert_and_log()
# The agents' status reports (set_router_statuses, set_binding_statuses): one executemany per
# table for a run of routers (SQLite: see below), each row guarded by its revision (a report on
# an older revision never overwrites newer state). Run as the driver's SQL: SQLAlchemy's
# processing of each row's parameters cost more than the update itself (~5 us a row; a cold sync
# of 100 routers x 1000 reports 100,000 rows).
_STATUS_UPDATE = (
    "UPDATE {table} SET status = {mark}, status_reason = {mark} "
    "WHERE id = {mark} AND revision_number = {mark}"
)
# SQLite (3.33+: UPDATE ... FROM): the rows as one statement per chunk instead. sqlite3's
# executemany releases the GIL around every row's step, and with the other agent worker running
# Python each row waited for it again: 5,000 rows took ~120 ms instead of ~25 (measured).
_SQLITE_STATUS_FROM = (
    "UPDATE {table} SET status = v.column1, status_reason = v.column2 FROM (VALUES {values}) "
    "AS v WHERE {table}.id = v.column3 AND {table}.revision_number = v.column4"
)
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33)
_STATUS_CHUNK = 2000  # rows a statement: 8,000 parameters (SQLite's limit is 32,766 since 3.32)


class _RouterHead(NamedTuple):
    """A router's columns that a binding write reads (see Repository._router_head)."""

    id: str
    project_id: str
    namespace: str
    revision_number: int


def _now() -> datetime:
    return datetime.now(UTC)


def _router_values(router: Router) -> dict[str, Any]:
    """What the audit trail records of a router (everything a user sets or sees change)."""
    return {
        "id": router.id,
        "name": router.name,
        "project_id": router.project_id,
        "namespace": router.namespace,
        "revision_number": router.revision_number,
    }


def _binding_values(binding: HelperBinding) -> dict[str, Any]:
    return {
        "id": binding.id,
        "router_id": binding.router_id,
        "project_id": binding.project_id,
        "protocol": binding.protocol.value,
        "port": binding.port,
        "helper": binding.helper,
        "direction": binding.direction.value,
        "revision_number": binding.revision_number,
    }


def _router(row: RouterRow | Row[Any] | SimpleNamespace) -> Router:
    return Router(
        id=row.id,
        name=row.name,
        project_id=row.project_id,
        namespace=row.namespace,
        status=Status(row.status),
        status_reason=row.status_reason,
        revision_number=row.revision_number,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _prefixed_router(row: Any) -> Router:
    """A router from columns named `r_<column>` (TokenStore.lookup_with_router)."""
    columns = row._asdict()  # a Row's or a Prepared row's
    return _router(SimpleNamespace(**{k[2:]: v for k, v in columns.items() if k.startswith("r_")}))


# A desired binding's columns, as store/desired.py's restore_desired takes them.
DESIRED_COLUMNS = (
    BindingRow.id,
    BindingRow.project_id,
    BindingRow.protocol,
    BindingRow.port,
    BindingRow.helper,
    BindingRow.direction,
    BindingRow.status,
    BindingRow.status_reason,
    BindingRow.revision_number,
)
# The agent's reads (store/desired.py), built once like the write path's statements above.
_DESIRED_ORDER = (_BINDINGS.c.protocol, _BINDINGS.c.port, _BINDINGS.c.direction)
_DESIRED_OF = (
    select(*DESIRED_COLUMNS)
    .where(_BINDINGS.c.router_id == bindparam("b_router"))
    .order_by(*_DESIRED_ORDER)
)
# Every router's: a full resync's one read (ordered by router first, for restore_all_desired).
_ALL_DESIRED = select(_BINDINGS.c.router_id, *DESIRED_COLUMNS).order_by(
    _BINDINGS.c.router_id, *_DESIRED_ORDER
)
_DESIRED_SOME = _DESIRED_OF.where(_BINDINGS.c.id.in_(bindparam("b_ids", expanding=True)))


def _binding(row: Any) -> HelperBinding:
    return restore_binding(
        id=row.id,
        router_id=row.router_id,
        project_id=row.project_id,
        protocol=Protocol(row.protocol),
        port=row.port,
        helper=row.helper,
        direction=Direction(row.direction),
        status=Status(row.status),
        status_reason=row.status_reason,
        revision_number=row.revision_number,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _conflict(
    router_id: str, protocol: Protocol, port: int, direction: Direction, existing_id: str
) -> BindingConflict:
    # Ingress keeps the wording clients already match on; only the other hook is named.
    where = protocol.value if direction is Direction.INGRESS else f"{direction.value} {protocol}"
    return BindingConflict(router_id, where, port, existing_id)


class Repository:
    """All reads and writes of one unit of work. `changed_routers` feeds the change notification."""

    def __init__(
        self,
        session: Session,
        audit: AuditContext | None = None,
        *,
        change_history: int = 10000,
    ) -> None:
        self._session = session
        # Rows read to be changed are locked (SELECT ... FOR UPDATE) where writers run at once
        # (PostgreSQL, READ COMMITTED); SQLite's writers already queue (BEGIN IMMEDIATE).
        self._lock_rows = session.get_bind().dialect.name != "sqlite"
        self.changed_routers: set[str] = set()
        # (router, new revision, binding changed) of each revision this unit moved; the Store
        # keeps them once committed (store/revisions.py).
        self.revision_notes: list[RevisionNote] = []
        # (router, revision) -> the binding that revision changed, as committed (None: deleted):
        # an agent's reload then reads none of the bindings (store/revisions.py).
        self.revision_contents: dict[tuple[str, int], HelperBinding | None] = {}
        # Routers whose status this unit wrote (no revision moves): the Store's revision notes
        # stop vouching for their rows (store/revisions.py).
        self.router_statuses_written: set[str] = set()
        self.audit = AuditLog(session, audit)
        self.tokens = TokenStore(session)
        self.hosts = HostRepository(session, self.audit)
        # How many change-log entries are kept (settings.watch_history).
        self.change_history = change_history
        # Router id -> (namespace, kind) of this unit of work's kernel changes: one change-log
        # row each, written just before the commit (the last kind wins).
        self._changes: dict[str, tuple[str, str]] = {}
        # The first and last change-log revision this unit wrote, once written (at the commit,
        # or with a last_change).
        self.change_revisions: tuple[int, int] | None = None
        # A last_change wrote its change-log row: no change may follow it.
        self._changes_closed = False
        # A router read with this unit's token (lookup_token), for the route's first read of
        # it (get_router, router_project); dropped by anything that reads a router to change
        # it or changes one: (router id, the router or None if none).
        self._prefetched: tuple[str, Router | None] | None = None
        # Told the revisions of the change log just written, before the COMMIT (Store: its
        # listener must not tell them again when their NOTIFY comes back).
        self.committing: Callable[[tuple[int, int]], None] | None = None

    # --- routers -------------------------------------------------------------------------

    def add_router(self, router: Router) -> Router:
        self._router_clash(router)
        now = _now()
        row = RouterRow(
            id=router.id,
            name=router.name,
            project_id=router.project_id,
            namespace=router.namespace,
            status=Status.PENDING.value,
            status_reason="",
            revision_number=1,
            created_at=now,
            updated_at=now,
        )
        # Before add(): this statement autoflushes, and a clash must reach _flush_or_conflict.
        # A deleted router's pending cleanup in this namespace must not delete the new router's
        # table: the new router's reconcile replaces the whole table anyway.
        replaced = (RouterTombstoneRow.router_id == router.id) | (
            RouterTombstoneRow.namespace == router.namespace
        )
        self._session.execute(
            delete(TombstoneHostRow).where(
                TombstoneHostRow.router_id.in_(select(RouterTombstoneRow.router_id).where(replaced))
            )
        )
        self._session.execute(delete(RouterTombstoneRow).where(replaced))
        self._session.add(row)
        self._flush_or_conflict(lambda: self._router_clash(router))
        self.changed_routers.add(router.id)
        self._note_change(router.id, router.namespace, CHANGE_MODIFIED)
        created = _router(row)
        self._audit_router("create_router", 201, None, created)
        return created

    def lookup_token(self, secret: str, *, router_id: str | None = None) -> AuthToken | None:
        """tokens.lookup(secret), the first read of a write's transaction. router_id: the
        router the write reads next (its path's), read in the same statement (one statement
        fewer) and kept for that read only; nothing of it is used unless the caller reads it."""
        if router_id is None:
            return self.tokens.lookup(secret)
        token, row = self.tokens.lookup_with_router(secret, router_id)
        if token is not None:
            self._prefetched = (router_id, None if row.r_id is None else _prefixed_router(row))
        return token

    def get_router(self, router_id: str, *, lock: bool = False) -> Router:
        """lock: for a check before a write (If-Match): the row is locked until the commit, so
        no concurrent writer changes it between the check and the write."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == router_id and not lock:
            if prefetched[1] is None:
                raise RouterNotFound(router_id)
            return prefetched[1]
        if lock:
            return _router(self._router_row(router_id, lock=lock))
        # A Core read (every request on a router does this one): no ORM object to build.
        self._session.flush()  # as the ORM's autoflush would
        row = self._session.connection().execute(_ROUTER, {"b_router": router_id}).one_or_none()
        if row is None:
            raise RouterNotFound(router_id)
        return _router(row)

    def router_project(self, router_id: str) -> str | None:
        """The project of a router, None if there is no such router. One query that returns one
        row either way (a scalar subquery), so an existing id and an unknown one cost the same."""
        if self._prefetched is not None and self._prefetched[0] == router_id:
            found = self._prefetched[1]  # kept for get_router: both cost nothing either way
            return None if found is None else found.project_id
        owner = select(RouterRow.project_id).where(RouterRow.id == router_id).scalar_subquery()
        project_id: str | None = self._session.execute(select(owner)).scalar_one()
        return project_id

    def list_routers(self, query: ListQuery) -> list[Router]:
        statement = apply_query(
            self._session, select(RouterRow), columns_of(RouterRow, ROUTER_FIELDS), query
        )
        return [_router(row) for row in self._session.scalars(statement)]

    def list_router_ids(self) -> list[str]:
        return list(self._session.scalars(select(RouterRow.id).order_by(RouterRow.id)))

    def census(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Routers by status, bindings by (status, helper): for the metrics (store/census.py)."""
        return routers_by_status(self._session), bindings_by_status(self._session)

    def request_resync(self, router_id: str) -> Router:
        """Asks every agent placing the router for a full reconcile (`cthm router resync`): a
        change-log entry of kind RESYNC (node agents see it in their watch), no new revision
        (nothing desired changed), and its audit row."""
        router = _router(self._router_row(router_id))
        self.changed_routers.add(router.id)  # wakes waiting watches now
        self._note_change(router.id, router.namespace, CHANGE_RESYNC)
        self._audit_router("resync_router", 202, router, router)
        return router

    def update_router(self, router_id: str, *, name: str) -> Router:
        row = self._router_row(router_id, lock=True)
        if row.name != name:
            before = _router(row)
            row.name = name
            # A name is not a kernel change: no change-log entry, and the hosts' reports, true
            # of the previous revision, stay true of this one (else the router would show
            # PENDING until every node agent's next resync).
            self._touch_router(row, kernel=False)
            self._session.execute(
                update(RouterHostRow)
                .where(
                    RouterHostRow.router_id == row.id,
                    RouterHostRow.revision_number == row.revision_number - 1,
                )
                .values(revision_number=row.revision_number)
            )
            self._audit_router("update_router", 200, before, _router(row))
        return _router(row)

    def delete_router(self, router_id: str) -> Router:
        row = self._router_row(router_id, lock=True)
        router = _router(row)
        # The bindings go with it: the record keeps them, as they were.
        removed = [_binding_values(b) for b in self.bindings_of([router_id])[router_id]]
        # Explicitly, not by ON DELETE CASCADE alone: the database may not enforce it.
        for model in (BindingHostRow, RouterHostRow):
            self._session.execute(delete(model).where(model.router_id == router_id))
        self._session.execute(delete(BindingRow).where(BindingRow.router_id == router_id))
        self._session.delete(row)
        # Every host placing the router removes its table, then clears its own record.
        self._session.execute(
            insert(TombstoneHostRow).from_select(
                ["router_id", "host"],
                select(literal(router_id), AgentNamespaceRow.host).where(
                    AgentNamespaceRow.namespace == row.namespace
                ),
            )
        )
        # The agent removes the kernel table and then clears this record.
        self._session.merge(
            RouterTombstoneRow(router_id=router_id, namespace=row.namespace, deleted_at=_now())
        )
        self._session.flush()
        self.changed_routers.add(router_id)
        self._note_change(router_id, router.namespace, CHANGE_DELETED)
        before = {**_router_values(router), "conntrack_helpers": removed}
        self.audit.record(
            action="delete_router",
            target_type="router",
            target_id=router.id,
            target_project_id=router.project_id,
            before=before,
            after=None,
            status_code=204,
        )
        return router

    def tombstones(self) -> dict[str, str]:
        """Deleted routers whose kernel tables are not yet known to be gone: id -> namespace."""
        rows = self._session.execute(
            select(RouterTombstoneRow.router_id, RouterTombstoneRow.namespace)
        )
        return {router_id: namespace for router_id, namespace in rows}

    def clear_tombstone(self, router_id: str) -> None:
        self._session.execute(
            delete(RouterTombstoneRow).where(RouterTombstoneRow.router_id == router_id)
        )

    # --- deployment identity -------------------------------------------------------------

    def deployment_id(self) -> str | None:
        """This database's deployment id (None if the row is missing; see store/deployment.py)."""
        return read_deployment_id(self._session)

    def create_deployment_id(self) -> str:
        return create_deployment_id(self._session)

    # --- bindings ------------------------------------------------------------------------

    def add_binding(
        self,
        binding: HelperBinding,
        *,
        quota: BindingQuota | None = None,
        router: Router | None = None,
        last_change: bool = False,
    ) -> HelperBinding:
        """quota: the limits of the router's project, checked in this transaction (None: none;
        the API always gives one). OverQuota if the binding would exceed one. The binding
        takes its router's project, whatever its own project_id says.
        router: the binding's router as read in this unit of work (get_router): its project,
        for the quota check and (PostgreSQL) the audit event written with the binding (None:
        read here, and the event written after). The binding's own project and the revision
        bumped are those the statement bumping the router reads.
        last_change: nothing else is changed in this unit of work after it (the API's create):
        on PostgreSQL, with `router` given, the change log's row is written by the same
        statement too (_BUMP_INSERT_AND_LOG_BINDING); a change noted after it raises
        RuntimeError (on either database).

        Core statements, not ORM objects: this is the API's hottest write, and the ORM's flushes
        cost more than the statements themselves. PostgreSQL: one statement (the router's bump
        and the binding's INSERT) and no SELECT before it (_BUMP_AND_INSERT_BINDING)."""
        self._check_changes_open()
        self._session.flush()  # what the ORM holds unwritten, before the Core statements below
        if quota is not None and not quota.unlimited:
            if router is not None and router.id == binding.router_id:
                project_id = router.project_id
            else:
                project_id = self._router_head(binding.router_id).project_id
            # Locks the project's routers, this one among them, in id order, then counts.
            self._check_binding_quota(binding.router_id, project_id, quota)
        now = _now()
        # The router's revision bumped first, its row locked by that (not on SQLite: its writer
        # holds the whole database), then the binding inserted; on PostgreSQL both at once. A
        # binding already holding the port is found by the unique constraint, not by a SELECT
        # before; the transaction is then rolled back and the winner named (_lost_race).
        values = {name: getattr(binding, name) for name in BINDING_FIELDS}
        values.update(
            protocol=binding.protocol.value,
            direction=binding.direction.value,
            status=Status.PENDING.value,
            status_reason="",
            revision_number=1,
            created_at=now,
            updated_at=now,
        )
        known = router.project_id if router is not None and router.id == binding.router_id else ""
        created = restore_binding(
            id=binding.id,
            router_id=binding.router_id,
            project_id=known or binding.project_id,  # known: checked below; else replaced
            protocol=binding.protocol,
            port=binding.port,
            helper=binding.helper,
            direction=binding.direction,
            status=Status.PENDING,
            status_reason="",
            revision_number=1,
            created_at=now,
            updated_at=now,
        )
        action = "create_router_conntrack_helper"
        router_params = {"b_router": binding.router_id, "b_now": now}
        connection = self._session.connection()
        taken = (binding.router_id, binding.protocol, binding.port, binding.direction)
        event: dict[str, Any] | None = None
        logged = False  # the change log's row written with the binding
        try:
            if connection.dialect.name == "postgresql" and known:
                event = self.audit.event_values(
                    action=action,
                    target_type="conntrack_helper",
                    target_id=created.id,
                    target_project_id=created.project_id,
                    before=None,
                    after=_binding_values(created),
                    status_code=201,
                )
                params = {
                    f"v_{name}": value
                    for name, value in values.items()
                    if name not in ("router_id", "project_id")  # the bumped row's
                }
                params.update((f"a_{name}", value) for name, value in event.items())
                logged = last_change and not self._changes
                if logged:
                    params["c_kind"] = CHANGE_MODIFIED
                bumped = connection.execute(
                    _BUMP_INSERT_AND_LOG_BINDING if logged else _BUMP_AND_INSERT_BINDING,
                    router_params | params,
                ).one_or_none()
            else:  # SQLite; PostgreSQL without the project known beforehand
                bumped = _BUMP_ROUTER_PREPARED.one_or_none(connection, router_params)
                if bumped is not None:
                    values["project_id"] = bumped.project_id
                    _INSERT_BINDING.run(connection, values)
        except IntegrityError:
            self._lost_race(lambda: self._raise_if_taken(*taken, exclude=None))
        if bumped is None:
            raise RouterNotFound(binding.router_id)
        head = _RouterHead(bumped.id, bumped.project_id, bumped.namespace, bumped.revision_number)
        if event is not None and head.project_id != known:
            # The event was written for the project read before: changed since (rolled back).
            raise Conflict("the router changed meanwhile; retry")
        if created.project_id != head.project_id:
            created = dataclasses.replace(created, project_id=head.project_id)
        self._bumped_router(head, now, changed=created.id, logged=logged)
        if logged:
            revision = bumped.revision
            prune_change_log(connection, revision, revision, self.change_history)
            self.change_revisions = (revision, revision)
        # On every database, so a caller breaking the promise fails in every test run.
        self._changes_closed = last_change
        self.revision_contents[head.id, head.revision_number] = created
        if event is None:
            self._audit_binding(action, 201, None, created)
        else:
            self.audit.recorded(event)  # inserted with the binding
        return created

    def get_binding(self, router_id: str, binding_id: str, *, lock: bool = False) -> HelperBinding:
        """lock: as get_router's; lock the router first (get_router), as every binding write
        does, so two writers never wait for each other's rows in opposite orders."""
        return _binding(self._binding_row(router_id, binding_id, lock=lock))

    def list_bindings(self, query: ListQuery, router_id: str | None = None) -> list[HelperBinding]:
        # Plain column rows, not ORM entities: this is the agent's hot path at N=1000.
        statement = select(*columns_of(BindingRow, BINDING_FIELDS).values())
        if router_id is not None:
            self._router_row(router_id)
            statement = statement.where(BindingRow.router_id == router_id)
        statement = apply_query(
            self._session, statement, columns_of(BindingRow, BINDING_FIELDS), query
        )
        return [_binding(row) for row in self._session.execute(statement)]

    def desired_bindings(
        self, router_id: str, ids: Collection[str] | None = None
    ) -> tuple[list[HelperBinding], list[tuple[str, int, str]]]:
        """A router's bindings as the agent needs them: no timestamps, in (protocol, port,
        direction) order, and the rows that fail the checks as (binding id, revision, reason).
        ids: only these bindings (the ones a reload found changed).

        The agent's hot path: one narrow query (see store/desired.py).
        """
        # Core, not the ORM's result processing: a thousand rows on every full sync.
        if ids is None:
            rows = self._session.connection().execute(_DESIRED_OF, {"b_router": router_id})
        else:
            rows = self._session.connection().execute(
                _DESIRED_SOME, {"b_router": router_id, "b_ids": list(ids)}
            )
        return restore_desired(router_id, rows)

    def binding_revisions(self, router_id: str) -> dict[str, int]:
        """Binding id -> revision of a router's bindings: what a reload compares with the
        bindings it already holds (two narrow columns, nothing converted)."""
        rows = self._session.connection().execute(
            select(BindingRow.id, BindingRow.revision_number).where(
                BindingRow.router_id == router_id
            )
        )
        return {b_id: revision for b_id, revision in rows}

    def desired_routers(self) -> list[tuple[str, int, Router | InvalidInput]]:
        """Every router as (id, revision, the router or why its row fails validation)."""
        found: list[tuple[str, int, Router | InvalidInput]] = []
        # Core rows, not ORM entities: every resync reads them all (as get_router does).
        self._session.flush()
        # all(): fetched in one call, not row by row (~10 ms less for 10,000 rows).
        for row in self._session.connection().execute(_ROUTER_ROWS).all():
            try:
                found.append((row.id, row.revision_number, _router(row)))
            except InvalidInput as exc:  # the row was edited behind the API's back
                found.append((row.id, row.revision_number, exc))
        return found

    def all_desired_bindings(
        self,
    ) -> dict[str, tuple[list[HelperBinding], list[tuple[str, int, str]]]]:
        """desired_bindings() of every router, from one query."""
        return restore_all_desired(self._session.connection().execute(_ALL_DESIRED).all())

    def router_revision(self, router_id: str) -> int | None:
        """The stored revision without building (and so validating) the router."""
        return self._session.scalar(
            select(RouterRow.revision_number).where(RouterRow.id == router_id)
        )

    def bindings_of(self, router_ids: Iterable[str]) -> dict[str, list[HelperBinding]]:
        ids = list(dict.fromkeys(router_ids))
        result: dict[str, list[HelperBinding]] = {router_id: [] for router_id in ids}
        if not ids:
            return result
        rows = self._session.scalars(
            select(BindingRow)
            .where(BindingRow.router_id.in_(ids))
            .order_by(BindingRow.protocol, BindingRow.port, BindingRow.direction)
        )
        for row in rows:
            result[row.router_id].append(_binding(row))
        return result

    def update_binding(
        self,
        router_id: str,
        binding_id: str,
        *,
        protocol: Protocol | None = None,
        port: int | None = None,
        helper: str | None = None,
        direction: Direction | None = None,
    ) -> HelperBinding:
        router_row = self._router_row(router_id, lock=True)
        row = self._binding_row(router_id, binding_id, lock=True)
        old = (row.protocol, row.port, row.direction, row.helper)
        new = (
            protocol.value if protocol is not None else row.protocol,
            port if port is not None else row.port,
            direction.value if direction is not None else row.direction,
            helper if helper is not None else row.helper,
        )
        if new == old:
            return _binding(row)
        taken = (router_id, Protocol(new[0]), new[1], Direction(new[2]))
        if new[:3] != old[:3]:
            self._raise_if_taken(*taken, exclude=binding_id)
        before = _binding(row)
        row.protocol, row.port, row.direction, row.helper = new
        row.status, row.status_reason = Status.PENDING.value, ""
        row.revision_number += 1
        row.updated_at = _now()
        self._flush_or_conflict(lambda: self._raise_if_taken(*taken, exclude=binding_id))
        self._touch_router(router_row, changed=binding_id)
        updated = _binding(row)
        self.revision_contents[router_row.id, router_row.revision_number] = updated
        self._audit_binding("update_router_conntrack_helper", 200, before, updated)
        return updated

    def delete_binding(self, router_id: str, binding_id: str) -> HelperBinding:
        router_row = self._router_row(router_id, lock=True)
        row = self._binding_row(router_id, binding_id, lock=True)
        binding = _binding(row)
        # Explicitly, not by ON DELETE CASCADE alone: the database may not enforce it.
        self._session.execute(delete(BindingHostRow).where(BindingHostRow.binding_id == binding_id))
        self._session.delete(row)
        self._session.flush()
        self._touch_router(router_row, changed=binding_id)
        self.revision_contents[router_row.id, router_row.revision_number] = None
        self._audit_binding("delete_router_conntrack_helper", 204, binding, None)
        return binding

    # --- status (agents) -----------------------------------------------------------------

    def set_router_status(
        self, router_id: str, status: Status, reason: str, *, revision_number: int
    ) -> bool:
        self.router_statuses_written.add(router_id)
        return self._set_status(RouterRow, router_id, status, reason, revision_number)

    def set_binding_status(
        self, binding_id: str, status: Status, reason: str, *, revision_number: int
    ) -> bool:
        return self._set_status(BindingRow, binding_id, status, reason, revision_number)

    def _set_status(
        self,
        model: type[RouterRow] | type[BindingRow],
        row_id: str,
        status: Status,
        reason: str,
        revision_number: int,
    ) -> bool:
        """Written only if the row is still at the revision the agent reconciled."""
        result = self._session.execute(
            update(model)
            .where(model.id == row_id, model.revision_number == revision_number)
            .values(status=status.value, status_reason=validate_status_reason(reason))
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def set_router_statuses(self, reports: Iterable[tuple[str, int, Status, str]]) -> None:
        """Many (router id, revision, status, reason) at once, each guarded by its revision:
        set_router_status() of each, in one statement (a cold sync reports every router)."""
        rows = list(reports)
        self.router_statuses_written.update(row[0] for row in rows)
        self._set_statuses(_ROUTERS, rows)

    def set_binding_statuses(self, reports: Iterable[tuple[str, int, Status, str]]) -> None:
        """Many (binding id, revision, status, reason) at once, each guarded by its revision."""
        self._set_statuses(_BINDINGS, reports)

    def _set_statuses(self, table: Table, reports: Iterable[tuple[str, int, Status, str]]) -> None:
        rows = [
            # Most reasons are empty (ACTIVE): nothing to clean.
            (st.value, validate_status_reason(r) if r != "" else "", row_id, rev)
            for row_id, rev, st, r in reports
        ]
        if not rows:
            return
        connection = self._session.connection()
        if connection.dialect.name == "sqlite" and _SQLITE_UPDATE_FROM:
            # One row per id, the last report's (as the executemany would leave it).
            last = list({row[2]: row for row in rows}.values())
            for start in range(0, len(last), _STATUS_CHUNK):
                chunk = last[start : start + _STATUS_CHUNK]
                statement = _SQLITE_STATUS_FROM.format(
                    table=table.name, values=", ".join(["(?, ?, ?, ?)"] * len(chunk))
                )
                connection.exec_driver_sql(statement, tuple(chain.from_iterable(chunk)))
            return
        # Positional parameters: `?` for sqlite3, `%s` for psycopg (format and pyformat).
        mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
        statement = _STATUS_UPDATE.format(table=table.name, mark=mark)
        connection.exec_driver_sql(statement, rows)  # one executemany

    # --- internals -----------------------------------------------------------------------

    def _audit_router(
        self, action: str, status_code: int, before: Router | None, after: Router | None
    ) -> None:
        self._audit(action, status_code, "router", before, after, _router_values)

    def _audit_binding(
        self,
        action: str,
        status_code: int,
        before: HelperBinding | None,
        after: HelperBinding | None,
    ) -> None:
        self._audit(action, status_code, "conntrack_helper", before, after, _binding_values)

    def _audit(
        self,
        action: str,
        status_code: int,
        target_type: str,
        before: _Audited | None,
        after: _Audited | None,
        values: Callable[[_Audited], dict[str, Any]],
    ) -> None:
        subject = after or before
        assert subject is not None
        self.audit.record(
            action=action,
            target_type=target_type,
            target_id=subject.id,
            target_project_id=subject.project_id,
            before=None if before is None else values(before),
            after=None if after is None else values(after),
            status_code=status_code,
        )

    def _router_row(self, router_id: str, *, lock: bool = False) -> RouterRow:
        """lock: read afresh and locked until the commit (see __init__), for a change made from
        what is read: a revision_number += 1 or an If-Match check must not race another
        writer's."""
        self._prefetched = None  # read to be changed: a router read before is not read again
        if lock and self._lock_rows:
            row = self._session.get(
                RouterRow, router_id, with_for_update=True, populate_existing=True
            )
        else:
            row = self._session.get(RouterRow, router_id)
        if row is None:
            raise RouterNotFound(router_id)
        return row

    def _binding_row(self, router_id: str, binding_id: str, *, lock: bool = False) -> BindingRow:
        # Looked up by BOTH ids: a binding of another router is "not found" (Neutron's IDOR bug).
        statement = select(BindingRow).where(
            BindingRow.id == binding_id, BindingRow.router_id == router_id
        )
        if lock and self._lock_rows:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        row = self._session.scalar(statement)
        if row is None:
            self._router_row(router_id)
            raise BindingNotFound(binding_id, router_id)
        return row

    def _router_head(self, router_id: str, *, lock: bool = False) -> _RouterHead:
        """What a binding write needs of its router, by one Core SELECT (no ORM object).
        lock: as _router_row's."""
        statement = _ROUTER_HEAD_LOCKED if lock and self._lock_rows else _ROUTER_HEAD
        row = self._session.connection().execute(statement, {"b_router": router_id}).one_or_none()
        if row is None:
            raise RouterNotFound(router_id)
        return _RouterHead(row.id, row.project_id, row.namespace, row.revision_number)

    def _bump_router(self, head: _RouterHead, now: datetime, *, changed: str | None = None) -> None:
        """_touch_router for a router read by _router_head: its revision + 1, by a Core UPDATE."""
        revision = head.revision_number + 1
        self._session.connection().execute(
            _BUMP_ROUTER, {"b_router": head.id, "b_revision": revision, "b_now": now}
        )
        self._bumped_router(head._replace(revision_number=revision), now, changed=changed)

    def _bumped_router(
        self, head: _RouterHead, now: datetime, *, changed: str | None, logged: bool = False
    ) -> None:
        """What follows a router's revision bump to `head.revision_number` in the database: the
        notes of this unit of work, and a RouterRow of it this session holds given the new
        values, so that a later read in this unit of work does not see the old revision.
        logged: its change-log row is written already (not noted for the commit)."""
        revision = head.revision_number
        self._prefetched = None
        self.revision_notes.append((head.id, revision, changed, now))
        cached = self._session.identity_map.get(identity_key(RouterRow, head.id))
        if cached is not None:
            set_committed_value(cached, "revision_number", revision)
            set_committed_value(cached, "updated_at", now)
        self.changed_routers.add(head.id)
        if not logged:
            self._note_change(head.id, head.namespace, CHANGE_MODIFIED)

    def _lost_race(self, explain: Callable[[], None]) -> NoReturn:
        """After a unique constraint refused a write: a concurrent writer won (see
        _flush_or_conflict)."""
        self._session.rollback()
        self._changes.clear()  # rolled back with the rest
        explain()  # raises the precise conflict when the winner is visible now
        raise Conflict("a concurrent change conflicted with this one; retry") from None

    def _touch_router(
        self, row: RouterRow, *, kernel: bool = True, changed: str | None = None
    ) -> None:
        """kernel: the change reaches the kernel (a binding's), so the change feed tells it.
        changed: the binding changed (store/revisions.py; None: not said)."""
        self._prefetched = None
        row.revision_number += 1
        row.updated_at = _now()
        self.revision_notes.append(
            (row.id, row.revision_number, changed if kernel else "", row.updated_at)
        )
        self._session.flush()
        self.changed_routers.add(row.id)
        if kernel:
            self._note_change(row.id, row.namespace, CHANGE_MODIFIED)

    def _note_change(self, router_id: str, namespace: str, kind: str) -> None:
        self._check_changes_open()
        self._prefetched = None  # written since: a router read before is not read again as is
        self._changes.pop(router_id, None)  # re-inserted: dict order is change order
        self._changes[router_id] = (namespace, kind)

    def _check_changes_open(self) -> None:
        if self._changes_closed:
            # Its row would follow a revision already written, out of the lock's order.
            raise RuntimeError("a change after the unit of work's last_change")

    def write_changes(self) -> None:
        """The change log's rows of the changes noted so far; the unit of work calls it just
        before its commit (rather than a session event listened to per unit: its registration
        and dispatch cost more than the call)."""
        if self._changes:
            changes, self._changes = self._changes, {}
            self.change_revisions = write_change_log(
                self._session, changes, self.change_history, _now()
            )
        # Also for a row written with its change (add_binding's last_change).
        if self.change_revisions is not None and self.committing is not None:
            self.committing(self.change_revisions)

    def _check_binding_quota(self, router_id: str, project_id: str, quota: BindingQuota) -> None:
        """Counts inside the create's own transaction, after serializing the creates that could
        race: SQLite's writers already queue (BEGIN IMMEDIATE, before the first read); elsewhere
        the project's router rows are locked first (SELECT ... FOR UPDATE, in id order so two
        creates cannot deadlock; SQLite has no FOR UPDATE and SQLAlchemy leaves it out)."""
        self._session.execute(
            select(RouterRow.id)
            .where(RouterRow.project_id == project_id)
            .order_by(RouterRow.id)
            .with_for_update()
        ).all()
        counted = select(func.count()).select_from(BindingRow)
        if quota.per_router != UNLIMITED:
            on_router = self._session.scalar(counted.where(BindingRow.router_id == router_id))
            if (on_router or 0) >= quota.per_router:
                raise OverQuota(
                    "quota_bindings_per_router", quota.per_router, f"router {router_id}"
                )
        if quota.per_project != UNLIMITED:
            in_project = self._session.scalar(counted.where(BindingRow.project_id == project_id))
            if (in_project or 0) >= quota.per_project:
                raise OverQuota(
                    "quota_bindings_per_project", quota.per_project, f"project {project_id}"
                )

    def _raise_if_taken(
        self,
        router_id: str,
        protocol: Protocol,
        port: int,
        direction: Direction,
        *,
        exclude: str | None,
    ) -> None:
        params: dict[str, Any] = {
            "b_router": router_id,
            "b_protocol": protocol.value,
            "b_port": port,
            "b_direction": direction.value,
        }
        statement = _TAKEN
        if exclude is not None:
            statement, params["b_exclude"] = _TAKEN_BY_ANOTHER, exclude
        self._session.flush()  # as the ORM's autoflush would, before a Core read
        existing = self._session.connection().execute(statement, params).scalar()
        if existing is not None:
            raise _conflict(router_id, protocol, port, direction, existing)

    def _router_clash(self, router: Router) -> None:
        """RouterExists or NamespaceInUse if a stored router has this one's id or namespace
        (one query for both; an id is given when adopting a Neutron router)."""
        clashes = self._session.scalars(
            select(RouterRow.id).where(
                (RouterRow.id == router.id) | (RouterRow.namespace == router.namespace)
            )
        ).all()
        if router.id in clashes:
            raise RouterExists(router.id)
        if clashes:
            raise NamespaceInUse(router.namespace, clashes[0])

    def _flush_or_conflict(self, explain: Callable[[], None]) -> None:
        """Flush; a unique-constraint race lost to a concurrent writer becomes a Conflict."""
        try:
            self._session.flush()
        except IntegrityError:
            self._lost_race(explain)
