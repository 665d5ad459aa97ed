"""Several hosts in the store (real SQLite): the change feed, node agents and placement, each
host's view and reports, the aggregate statuses, per-host tombstones, liveness, migration 0006.

Rows the code under test writes are read back with plain sqlite3 where it matters.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from cthm.domain import (
    AgentNotFound,
    InvalidInput,
    ListQuery,
    Role,
    Router,
    Status,
    new_binding,
    new_router,
    node_agent_id,
)
from cthm.store import AuditContext, Store
from support.databases import PlainSql
from support.store import CATALOG, MakeBinding, MakeRouter

NOW = datetime(2026, 12, 4, 20, 0, 0, tzinfo=UTC)
DOWN = 75.0
LATER = NOW + timedelta(days=1)  # every agent that reported at NOW is dead by then


def sql(db: Path | PlainSql, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows read by hand: PlainSql on either database, sqlite3 on a file (`?` placeholders)."""
    if isinstance(db, PlainSql):
        return db(statement, *params)
    connection = sqlite3.connect(db)
    try:
        rows = connection.execute(statement, params).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()


def report_agent(
    store: Store,
    host: str,
    namespaces: list[str],
    *,
    now: datetime = NOW,
    token_id: str | None = "tok-1",
    kernel: list[dict[str, Any]] | None = None,
) -> Any:
    with store.unit_of_work(audit=AuditContext("req", token_id, "admin")) as repo:
        return repo.hosts.record_agent_report(
            host=host,
            started_at=NOW,
            namespaces=namespaces,
            configurations={"backend": "nftables"},
            kernel=kernel or [],
            token_id=token_id,
            now=now,
            down_time=DOWN,
        )


def report_router(
    store: Store,
    host: str,
    router_id: str,
    status: Status = Status.ACTIVE,
    reason: str = "",
    *,
    revision: int | None = None,
    bindings: list[tuple[str, int, Status, str]] | None = None,
    kernel: dict[str, Any] | None = None,
    now: datetime = NOW,
) -> bool:
    with store.unit_of_work() as repo:
        if revision is None:
            revision = repo.get_router(router_id).revision_number
        if bindings is None:
            bindings = [
                (b.id, b.revision_number, status, reason)
                for b in repo.bindings_of([router_id])[router_id]
            ]
        return repo.hosts.record_host_report(
            host,
            router_id=router_id,
            revision_number=revision,
            status=status,
            reason=reason,
            bindings=bindings,
            kernel=kernel,
            now=now,
            down_time=DOWN,
        )


def router_status(store: Store, router_id: str) -> tuple[Status, str]:
    with store.unit_of_work(write=False) as repo:
        router = repo.get_router(router_id)
    return router.status, router.status_reason


def binding_statuses(store: Store, router_id: str) -> dict[str, tuple[Status, str]]:
    with store.unit_of_work(write=False) as repo:
        return {b.id: (b.status, b.status_reason) for b in repo.bindings_of([router_id])[router_id]}


def change_rows(db_path: Path | PlainSql) -> list[tuple[int, str, str, str]]:
    return [
        (rev, router_id, namespace, kind)
        for rev, router_id, namespace, kind in sql(
            db_path, "SELECT revision, router_id, namespace, kind FROM change_log ORDER BY revision"
        )
    ]


@pytest.fixture
def counted(store: Store) -> Iterator[list[str]]:
    """Every SQL statement the store runs from now on."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = store._engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


# --- change feed ----------------------------------------------------------------------------


def test_an_empty_feed_has_head_zero_and_no_oldest(store: Store) -> None:
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.head_revision() == 0
        assert repo.hosts.oldest_revision() is None
        assert repo.hosts.changes_since(0, None, 10) == []


def test_each_kernel_change_gets_the_next_revision_one_row_per_router_per_unit_of_work(
    store: Store, plain_sql: PlainSql, make_router: MakeRouter
) -> None:
    first = make_router("first")
    with store.unit_of_work() as repo:  # three bindings on one router: one row
        for port in (21, 2121, 2122):
            repo.add_binding(new_binding(CATALOG, first, protocol="tcp", port=port, helper="ftp"))
    second = make_router("second")
    with store.unit_of_work() as repo:  # two routers in one unit: a row each
        (b,) = [b for b in repo.bindings_of([first.id])[first.id] if b.port == 21]
        repo.update_binding(first.id, b.id, port=2100)
        repo.add_binding(new_binding(CATALOG, second, protocol="udp", port=69, helper="tftp"))
    with store.unit_of_work() as repo:
        repo.update_router(first.id, name="renamed")  # not a kernel change: no row
    with store.unit_of_work() as repo:
        (b,) = [b for b in repo.bindings_of([first.id])[first.id] if b.port == 2122]
        repo.delete_binding(first.id, b.id)
    with store.unit_of_work() as repo:
        repo.delete_router(second.id)

    rows = change_rows(plain_sql)
    assert [(router_id, kind) for _, router_id, _, kind in rows] == [
        (first.id, "MODIFIED"),
        (first.id, "MODIFIED"),
        (second.id, "MODIFIED"),
        (first.id, "MODIFIED"),
        (second.id, "MODIFIED"),
        (first.id, "MODIFIED"),
        (second.id, "DELETED"),
    ]
    assert [rev for rev, *_ in rows] == list(range(1, 8))
    assert {(router_id, ns) for _, router_id, ns, _ in rows} == {
        (first.id, first.namespace),
        (second.id, second.namespace),
    }
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.head_revision() == 7
        assert repo.hosts.oldest_revision() == 1


def test_a_router_added_and_deleted_in_one_unit_of_work_logs_one_deleted_row(
    store: Store, plain_sql: PlainSql
) -> None:
    with store.unit_of_work() as repo:
        router = repo.add_router(new_router(name="brief", project_id="p"))
        repo.delete_router(router.id)
    assert [(r, k) for _, r, _, k in change_rows(plain_sql)] == [(router.id, "DELETED")]


def test_a_rolled_back_unit_of_work_logs_nothing(store: Store, plain_sql: PlainSql) -> None:
    def abandon() -> None:
        with store.unit_of_work() as repo:
            repo.add_router(new_router(name="gone", project_id="p"))
            raise RuntimeError("abandon")

    with pytest.raises(RuntimeError):
        abandon()
    assert change_rows(plain_sql) == []
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.head_revision() == 0


def test_changes_since_filters_by_namespace_in_order_up_to_the_limit(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    a, b, c = make_router("a"), make_router("b"), make_router("c")
    for port in (21, 2121):
        make_binding(a, port=port)
        make_binding(b, port=port)
    with store.unit_of_work(write=False) as repo:
        every = repo.hosts.changes_since(0, None, 100)
        assert [ch.revision for ch in every] == list(range(1, 8))
        mine = repo.hosts.changes_since(0, {a.namespace, c.namespace}, 100)
        assert [(ch.router_id, ch.kind) for ch in mine] == [
            (a.id, "MODIFIED"),
            (c.id, "MODIFIED"),
            (a.id, "MODIFIED"),
            (a.id, "MODIFIED"),
        ]
        assert [ch.revision for ch in repo.hosts.changes_since(3, None, 2)] == [4, 5]
        assert repo.hosts.changes_since(7, None, 100) == []
        assert repo.hosts.changes_since(0, [], 100) == []
        assert {ch.namespace for ch in mine} == {a.namespace, c.namespace}


def test_the_log_is_pruned_to_about_keep_rows_and_revisions_are_never_reused(
    database_url: str, plain_sql: PlainSql
) -> None:
    keep = 10
    store = Store(database_url, change_history=keep)
    store.migrate()
    try:
        routers = []
        for i in range(35):
            with store.unit_of_work() as repo:
                routers.append(repo.add_router(new_router(name=f"r{i}", project_id="p")))
        with store.unit_of_work(write=False) as repo:
            head, oldest = repo.hosts.head_revision(), repo.hosts.oldest_revision()
        count = len(change_rows(plain_sql))
        assert head == 35
        assert keep <= count < 2 * keep
        assert oldest == head - count + 1
        # Even with every row gone, the next change gets a new revision (AUTOINCREMENT).
        sql(plain_sql, "DELETE FROM change_log")
        with store.unit_of_work() as repo:
            repo.delete_router(routers[0].id)
        assert [rev for rev, *_ in change_rows(plain_sql)] == [36]
    finally:
        store.close()


def test_the_change_log_costs_one_insert_per_unit_of_work(
    store: Store, make_router: MakeRouter, counted: list[str]
) -> None:
    router = make_router()
    counted.clear()
    with store.unit_of_work() as repo:
        for port in range(2000, 2010):
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=port, helper="ftp"))
    touching = [s for s in counted if "change_log" in s]
    assert len(touching) == 1
    # PostgreSQL: the INSERT within the statement that takes the lock and NOTIFYs its revision.
    assert touching[0].startswith(("INSERT INTO change_log", "WITH locked AS MATERIALIZED"))
    assert "INSERT INTO change_log" in touching[0]
    counted.clear()
    with store.unit_of_work(write=False) as repo:
        repo.list_router_ids()
    assert not [s for s in counted if "change_log" in s]


# --- agents and placement -------------------------------------------------------------------


def test_an_agent_report_registers_places_and_audits_once_per_token(
    store: Store, plain_sql: PlainSql, make_router: MakeRouter
) -> None:
    here, elsewhere = make_router("here"), make_router("elsewhere")
    result = report_agent(store, "node-a", [here.namespace, "qrouter-not-a-router"])
    assert result.created
    assert result.agent.id == node_agent_id("node-a")
    assert result.agent.host == "node-a"
    assert result.agent.registered_by == "tok-1"
    assert result.agent.configurations == {"backend": "nftables"}
    assert result.placed == [(here.id, here.namespace, here.revision_number)]

    again = report_agent(store, "node-a", [here.namespace], now=NOW + timedelta(seconds=30))
    assert not again.created
    assert again.agent.created_at == NOW
    assert again.agent.heartbeat_at == NOW + timedelta(seconds=30)
    report_agent(store, "node-a", [here.namespace], token_id="tok-2")

    with store.unit_of_work(write=False) as repo:
        assert [a.host for a in repo.hosts.agents()] == ["node-a"]
        agent = repo.hosts.get_agent(node_agent_id("node-a"))
        assert agent is not None
        assert agent.registered_by == "tok-2"
        assert repo.hosts.get_agent(node_agent_id("node-z")) is None
        assert repo.hosts.host_namespaces("node-a") == {here.namespace}
        assert repo.hosts.placement([here.id, elsewhere.id]) == {
            here.id: ["node-a"],
            elsewhere.id: [],
        }
        events = sorted(
            (e for e in repo.audit.list(ListQuery()) if e["action"] == "register_agent"),
            key=lambda e: str(e["time"]),
        )
    assert [(e["target_type"], e["target_id"], e["detail"]) for e in events] == [
        ("agent", node_agent_id("node-a"), "host node-a registered by token tok-1"),
        ("agent", node_agent_id("node-a"), "host node-a registered by token tok-2"),
    ]
    assert sql(plain_sql, "SELECT host, namespace FROM agent_namespaces") == [
        ("node-a", here.namespace)
    ]


def test_placement_lists_every_host_in_name_order(store: Store, make_router: MakeRouter) -> None:
    router = make_router()
    for host in ("node-c", "node-a", "node-b"):
        report_agent(store, host, [router.namespace])
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.placement([router.id]) == {router.id: ["node-a", "node-b", "node-c"]}


def test_a_router_on_no_host_says_no_agent_reports_its_namespace(
    store: Store, make_router: MakeRouter
) -> None:
    router = make_router()
    report_agent(store, "node-a", [router.namespace])
    report_router(store, "node-a", router.id)
    assert router_status(store, router.id) == (Status.ACTIVE, "")
    report_agent(store, "node-a", [])  # the namespace left the host
    assert router_status(store, router.id) == (
        Status.PENDING,
        f"no agent reports namespace {router.namespace} on its host",
    )
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.host_states(router.id, now=NOW, down_time=DOWN) == []
        assert repo.hosts.host_view("node-a", router.id) is None
    # Its report went with the placement: coming back, it is behind until it reports again.
    report_agent(store, "node-a", [router.namespace])
    assert router_status(store, router.id) == (
        Status.PENDING,
        f"host node-a: not yet at revision {router.revision_number}",
    )


def test_kernel_summaries_are_kept_for_placed_routers_only(
    store: Store, make_router: MakeRouter
) -> None:
    placed, other = make_router("placed"), make_router("other")
    summary = {"router_id": placed.id, "namespace": placed.namespace, "in_sync": True}
    foreign = {"router_id": other.id, "namespace": other.namespace, "in_sync": False}
    report_agent(store, "node-a", [placed.namespace], kernel=[summary, foreign])
    with store.unit_of_work(write=False) as repo:
        (state,) = repo.hosts.host_states(placed.id, now=NOW, down_time=DOWN)
        assert state.kernel == summary
        assert (state.revision_number, state.status) == (None, None)
        assert repo.hosts.host_states(other.id, now=NOW, down_time=DOWN) == []
    # A later summary replaces it; a status report keeps it unless it carries its own.
    report_router(store, "node-a", placed.id)
    newer = {**summary, "in_sync": False}
    report_agent(store, "node-a", [placed.namespace], kernel=[newer])
    with store.unit_of_work(write=False) as repo:
        (state,) = repo.hosts.host_states(placed.id, now=NOW, down_time=DOWN)
    assert state.kernel == newer
    assert state.status is Status.ACTIVE
    assert state.agent_id == node_agent_id("node-a")
    assert state.alive


# --- host view ------------------------------------------------------------------------------


def test_host_view_shows_this_hosts_status_at_the_current_revision(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    ftp = make_binding(router, port=21)
    tftp = make_binding(router, protocol="udp", port=69, helper="tftp")
    report_agent(store, "node-a", [router.namespace])
    report_agent(store, "node-b", [router.namespace])
    report_router(store, "node-a", router.id, Status.ACTIVE, "fine on a")

    with store.unit_of_work(write=False) as repo:
        view_a = repo.hosts.host_view("node-a", router.id)
        view_b = repo.hosts.host_view("node-b", router.id)
        assert repo.hosts.host_view("node-c", router.id) is None
        assert repo.hosts.host_view("node-a", str(uuid.uuid4())) is None
    assert view_a is not None
    assert view_b is not None
    assert (view_a.router.status, view_a.router.status_reason) == (Status.ACTIVE, "fine on a")
    assert [(b.id, b.status, b.status_reason) for b in view_a.bindings] == [
        (ftp.id, Status.ACTIVE, "fine on a"),
        (tftp.id, Status.ACTIVE, "fine on a"),
    ]
    assert (view_b.router.status, view_b.router.status_reason) == (Status.PENDING, "")
    assert {b.status for b in view_b.bindings} == {Status.PENDING}
    assert view_a.router.revision_number == 3
    assert view_a.invalid is None
    assert not view_a.rejected

    # A new binding: the router's revision moves on, so host a's report no longer holds for
    # it; the unchanged binding's does.
    new = make_binding(router, port=2121)
    with store.unit_of_work(write=False) as repo:
        view_a = repo.hosts.host_view("node-a", router.id)
    assert view_a is not None
    assert (view_a.router.status, view_a.router.revision_number) == (Status.PENDING, 4)
    by_id = {b.id: b.status for b in view_a.bindings}
    assert by_id == {ftp.id: Status.ACTIVE, tftp.id: Status.ACTIVE, new.id: Status.PENDING}


def test_host_views_lists_every_router_on_the_host_by_id_with_its_bindings(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    routers = [make_router(f"r{i}") for i in range(3)]
    away = make_router("away")
    for router in [*routers, away]:
        make_binding(router)
    report_agent(store, "node-a", [r.namespace for r in routers])
    with store.unit_of_work(write=False) as repo:
        views = repo.hosts.host_views("node-a")
        assert repo.hosts.host_views("node-z") == []
    assert [v.router.id for v in views] == sorted(r.id for r in routers)
    assert all(len(v.bindings) == 1 and v.bindings[0].router_id == v.router.id for v in views)


def test_a_router_row_edited_into_nonsense_is_shown_invalid_without_bindings(
    store: Store, plain_sql: PlainSql, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    make_binding(router)
    report_agent(store, "node-a", [router.namespace])
    sql(plain_sql, "UPDATE routers SET project_id = 'bad project!' WHERE id = ?", router.id)
    with store.unit_of_work(write=False) as repo:
        view = repo.hosts.host_view("node-a", router.id)
        (listed,) = repo.hosts.host_views("node-a")
    assert view is not None
    assert view.invalid is not None
    assert view.invalid.startswith("refused: Invalid input for project_id")
    assert (view.router.id, view.router.revision_number, view.bindings) == (router.id, 2, ())
    assert listed.invalid == view.invalid


def test_a_binding_row_edited_into_nonsense_is_rejected(
    store: Store, plain_sql: PlainSql, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    good, bad = make_binding(router, port=21), make_binding(router, port=2121)
    report_agent(store, "node-a", [router.namespace])
    sql(plain_sql, "UPDATE conntrack_helpers SET protocol = 'sctp' WHERE id = ?", bad.id)
    with store.unit_of_work(write=False) as repo:
        view = repo.hosts.host_view("node-a", router.id)
    assert view is not None
    assert [b.id for b in view.bindings] == [good.id]
    assert view.rejected == ((bad.id, 1, "refused: invalid protocol 'sctp' in the database"),)


def test_host_view_of_a_router_with_1000_bindings_is_two_queries(
    store: Store, db_path: Path, make_router: MakeRouter, counted: list[str]
) -> None:
    router = make_router()
    stamp = "2026-12-04 20:00:00.000000"
    connection = sqlite3.connect(db_path)
    try:
        connection.executemany(
            "INSERT INTO conntrack_helpers (id, router_id, project_id, protocol, port, helper, "
            "direction, status, status_reason, revision_number, created_at, updated_at) "
            "VALUES (?, ?, 'p', 'tcp', ?, 'ftp', 'ingress', 'PENDING', '', 1, ?, ?)",
            [(str(uuid.uuid4()), router.id, port, stamp, stamp) for port in range(1, 1001)],
        )
        connection.commit()
    finally:
        connection.close()
    report_agent(store, "node-a", [router.namespace])
    counted.clear()
    with store.unit_of_work(write=False) as repo:
        view = repo.hosts.host_view("node-a", router.id)
    assert view is not None
    assert len(view.bindings) == 1000
    assert len([s for s in counted if s.lstrip().upper().startswith("SELECT")]) <= 2


# --- reports and aggregation ----------------------------------------------------------------


@pytest.fixture
def ha_router(store: Store, make_router: MakeRouter) -> Router:
    """A router whose namespace hosts node-a and node-b both report (HA)."""
    router = make_router("ha")
    report_agent(store, "node-a", [router.namespace])
    report_agent(store, "node-b", [router.namespace])
    return router


def test_an_ha_router_is_active_only_when_both_hosts_are_at_its_revision(
    store: Store, ha_router: Router, make_binding: MakeBinding
) -> None:
    router = ha_router
    rev = router.revision_number
    assert router_status(store, router.id) == (
        Status.PENDING,
        f"host node-a: not yet at revision {rev}; host node-b: not yet at revision {rev}",
    )
    assert report_router(store, "node-a", router.id)
    assert router_status(store, router.id) == (
        Status.PENDING,
        f"host node-b: not yet at revision {rev}",
    )
    assert report_router(store, "node-b", router.id, reason="conntrack ok")
    assert router_status(store, router.id) == (Status.ACTIVE, "host node-b: conntrack ok")

    report_router(store, "node-b", router.id, Status.ERROR, "nft refused the table")
    assert router_status(store, router.id) == (
        Status.ERROR,
        "host node-b: nft refused the table",
    )

    # A new revision: as in embedded mode the status stays until a report comes; the first
    # one leaves the other host behind.
    make_binding(router)
    assert router_status(store, router.id)[0] is Status.ERROR
    report_router(store, "node-a", router.id)
    assert router_status(store, router.id) == (
        Status.PENDING,
        f"host node-b: not yet at revision {rev + 1}",
    )


def test_an_older_report_does_not_replace_a_newer_one(
    store: Store, ha_router: Router, make_binding: MakeBinding
) -> None:
    router = ha_router
    make_binding(router)
    report_router(store, "node-a", router.id)
    report_router(store, "node-b", router.id)
    assert router_status(store, router.id)[0] is Status.ACTIVE
    report_router(store, "node-b", router.id, Status.ERROR, "stale", revision=1, bindings=[])
    assert router_status(store, router.id) == (Status.ACTIVE, "")
    with store.unit_of_work(write=False) as repo:
        states = repo.hosts.host_states(router.id, now=NOW, down_time=DOWN)
    assert [(s.host, s.revision_number, s.status) for s in states] == [
        ("node-a", 2, Status.ACTIVE),
        ("node-b", 2, Status.ACTIVE),
    ]


def test_bindings_aggregate_over_hosts_and_other_routers_bindings_are_ignored(
    store: Store, ha_router: Router, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = ha_router
    ftp = make_binding(router)
    other = make_router("other")
    foreign = make_binding(other)
    assert binding_statuses(store, router.id)[ftp.id] == (Status.PENDING, "")
    report_router(
        store,
        "node-a",
        router.id,
        bindings=[(ftp.id, 1, Status.ACTIVE, ""), (foreign.id, 1, Status.ERROR, "spoof")],
    )
    assert binding_statuses(store, router.id)[ftp.id] == (
        Status.PENDING,
        "host node-b: not yet at revision 1",
    )
    assert binding_statuses(store, other.id)[foreign.id] == (Status.PENDING, "")
    report_router(
        store, "node-b", router.id, bindings=[(ftp.id, 1, Status.ERROR, "no helper module")]
    )
    assert binding_statuses(store, router.id)[ftp.id] == (
        Status.ERROR,
        "host node-b: no helper module",
    )
    report_router(store, "node-b", router.id, bindings=[(ftp.id, 1, Status.ACTIVE, "")])
    assert binding_statuses(store, router.id)[ftp.id] == (Status.ACTIVE, "")


def test_a_report_for_a_router_not_placed_on_the_host_is_refused(
    store: Store, plain_sql: PlainSql, make_router: MakeRouter
) -> None:
    router = make_router()
    report_agent(store, "node-a", [router.namespace])
    report_agent(store, "node-b", [])
    assert not report_router(store, "node-b", router.id, Status.ACTIVE, revision=1, bindings=[])
    assert not report_router(
        store, "node-a", str(uuid.uuid4()), Status.ACTIVE, revision=1, bindings=[]
    )
    assert sql(plain_sql, "SELECT host FROM router_hosts") == []
    assert router_status(store, router.id)[0] is Status.PENDING


def test_a_rename_keeps_the_hosts_reports_current(store: Store, ha_router: Router) -> None:
    router = ha_router
    report_router(store, "node-a", router.id)
    report_router(store, "node-b", router.id)
    with store.unit_of_work() as repo:
        renamed = repo.update_router(router.id, name="renamed")
    assert renamed.revision_number == router.revision_number + 1
    assert router_status(store, router.id) == (Status.ACTIVE, "")
    with store.unit_of_work(write=False) as repo:
        view = repo.hosts.host_view("node-a", router.id)
    assert view is not None
    assert view.router.status is Status.ACTIVE


# --- tombstones -----------------------------------------------------------------------------


def test_a_deleted_router_is_cleared_per_host_and_its_tombstone_goes_with_the_last(
    store: Store, plain_sql: PlainSql, ha_router: Router
) -> None:
    router = ha_router
    report_agent(store, "node-c", [])
    report_router(store, "node-a", router.id)
    with store.unit_of_work() as repo:
        repo.delete_router(router.id)
    assert sql(plain_sql, "SELECT count(*) FROM router_hosts") == [(0,)]
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.host_tombstones("node-a") == {router.id: router.namespace}
        assert repo.hosts.host_tombstones("node-b") == {router.id: router.namespace}
        assert repo.hosts.host_tombstones("node-c") == {}
    with store.unit_of_work() as repo:
        repo.hosts.clear_host_tombstone("node-a", router.id)
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.host_tombstones("node-a") == {}
        assert repo.tombstones() == {router.id: router.namespace}
    with store.unit_of_work() as repo:
        repo.hosts.clear_host_tombstone("node-b", router.id)
        repo.hosts.clear_host_tombstone("node-b", router.id)  # idempotent
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.host_tombstones("node-b") == {}
        assert repo.tombstones() == {}
    assert sql(plain_sql, "SELECT count(*) FROM tombstone_hosts") == [(0,)]


def test_a_new_router_in_a_deleted_routers_namespace_drops_its_host_tombstones(
    store: Store, ha_router: Router
) -> None:
    with store.unit_of_work() as repo:
        repo.delete_router(ha_router.id)
    with store.unit_of_work() as repo:
        repo.add_router(new_router(name="again", project_id="p", namespace=ha_router.namespace))
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.host_tombstones("node-a") == {}
        assert repo.tombstones() == {}


# --- forgetting agents, liveness ------------------------------------------------------------


def test_forget_agent_removes_its_host_and_recomputes_its_routers(
    store: Store, plain_sql: PlainSql, ha_router: Router, make_binding: MakeBinding
) -> None:
    router = ha_router
    make_binding(router)
    report_router(store, "node-a", router.id)
    with store.unit_of_work() as repo:
        repo.delete_router(
            repo.add_router(new_router(name="gone", project_id="p", namespace="qrouter-gone")).id
        )
    report_agent(store, "node-b", [router.namespace, "qrouter-gone"])
    assert router_status(store, router.id)[0] is Status.PENDING
    with store.unit_of_work() as repo:
        repo.delete_router(repo.add_router(new_router(name="g2", project_id="p")).id)

    agent_id = node_agent_id("node-b")
    with store.unit_of_work() as repo:
        forgotten = repo.hosts.forget_agent(agent_id, now=NOW, down_time=DOWN)
    assert forgotten.host == "node-b"
    assert router_status(store, router.id) == (Status.ACTIVE, "")
    for table in ("agent_namespaces", "router_hosts", "binding_hosts", "tombstone_hosts"):
        assert ("node-b",) not in sql(plain_sql, f"SELECT host FROM {table}")
    with store.unit_of_work(write=False) as repo:
        assert repo.hosts.get_agent(agent_id) is None
        assert repo.hosts.placement([router.id]) == {router.id: ["node-a"]}
        (event_,) = [e for e in repo.audit.list(ListQuery()) if e["action"] == "delete_agent"]
    assert (event_["target_type"], event_["target_id"]) == ("agent", agent_id)
    with pytest.raises(AgentNotFound), store.unit_of_work() as repo:
        repo.hosts.forget_agent(agent_id, now=NOW, down_time=DOWN)


def test_a_dead_agent_flips_its_routers_to_error_and_its_return_flips_them_back(
    store: Store, ha_router: Router, make_binding: MakeBinding
) -> None:
    router = ha_router
    ftp = make_binding(router)
    report_router(store, "node-a", router.id)
    report_router(store, "node-b", router.id)
    assert router_status(store, router.id) == (Status.ACTIVE, "")

    with store.unit_of_work() as repo:  # nothing changed yet
        assert repo.hosts.refresh_liveness(NOW + timedelta(seconds=10), DOWN) == []
    report_agent(store, "node-a", [router.namespace], now=LATER)  # a lives on, b does not
    with store.unit_of_work() as repo:
        assert repo.hosts.refresh_liveness(LATER, DOWN) == [router.id]
    dead = "host node-b: agent dead (last report 2026-12-04T20:00:00Z)"
    assert router_status(store, router.id) == (Status.ERROR, dead)
    assert binding_statuses(store, router.id)[ftp.id] == (Status.ERROR, dead)
    with store.unit_of_work() as repo:  # noted once
        assert repo.hosts.refresh_liveness(LATER, DOWN) == []
    with store.unit_of_work(write=False) as repo:
        states = repo.hosts.host_states(router.id, now=LATER, down_time=DOWN)
    assert [(s.host, s.alive) for s in states] == [("node-a", True), ("node-b", False)]

    report_agent(store, "node-b", [router.namespace], now=LATER)  # back
    assert router_status(store, router.id) == (Status.ACTIVE, "")
    assert binding_statuses(store, router.id)[ftp.id] == (Status.ACTIVE, "")
    with store.unit_of_work() as repo:
        assert repo.hosts.refresh_liveness(LATER, DOWN) == []


# --- tokens ---------------------------------------------------------------------------------


def test_a_token_limited_to_a_host_keeps_it(store: Store) -> None:
    with store.unit_of_work() as repo:
        token, secret = repo.tokens.create(project_id="p", roles=[Role.AGENT], host="node-a")
        unlimited, _ = repo.tokens.create(project_id="p", roles=[Role.AGENT])
    assert token.host == "node-a"
    assert unlimited.host is None
    with store.unit_of_work(write=False) as repo:
        found = repo.tokens.lookup(secret)
        assert found is not None
        assert found.host == "node-a"
        assert repo.tokens.get(token.id).host == "node-a"
        assert {t.id: t.host for t in repo.tokens.list(ListQuery())} == {
            token.id: "node-a",
            unlimited.id: None,
        }
    with pytest.raises(InvalidInput, match="host"), store.unit_of_work() as repo:
        repo.tokens.create(project_id="p", roles=[Role.AGENT], host="-bad host")


# --- migration 0006 -------------------------------------------------------------------------

HOST_TABLES = {
    "change_log",
    "agents",
    "agent_namespaces",
    "router_hosts",
    "binding_hosts",
    "tombstone_hosts",
}


def table_names(db_path: Path) -> set[str]:
    return {name for (name,) in sql(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}


def columns(db_path: Path, table: str) -> list[str]:
    return [str(row[1]) for row in sql(db_path, f"PRAGMA table_info({table})")]


def test_migration_0006_round_trip_keeps_the_rest_and_refuses_to_widen_host_tokens(
    store: Store, db_path: Path, ha_router: Router
) -> None:
    report_router(store, "node-a", ha_router.id)
    with store.unit_of_work() as repo:
        token, _ = repo.tokens.create(project_id="p", roles=[Role.AGENT], host="node-a")
    assert table_names(db_path) >= HOST_TABLES
    assert (
        "AUTOINCREMENT"
        in sql(db_path, "SELECT sql FROM sqlite_master WHERE name = 'change_log'")[0][0]
    )

    with pytest.raises(RuntimeError, match="1 unrevoked agent token"):
        store.downgrade("0005")
    assert table_names(db_path) >= HOST_TABLES  # nothing half-done
    assert sql(db_path, "SELECT version_num FROM alembic_version") == [("0006",)]

    with store.unit_of_work() as repo:
        repo.tokens.revoke(token.id, NOW)
    store.downgrade("0005")
    assert not HOST_TABLES & table_names(db_path)
    assert "host" not in columns(db_path, "auth_tokens")
    assert sql(db_path, "SELECT id FROM routers") == [(ha_router.id,)]
    assert sql(db_path, "SELECT id FROM auth_tokens") == [(token.id,)]

    store.migrate()
    assert table_names(db_path) >= HOST_TABLES
    assert sql(db_path, "SELECT host FROM auth_tokens") == [(None,)]
    with store.unit_of_work() as repo:  # usable again, the feed starting afresh
        repo.update_router(ha_router.id, name="after")
        assert repo.hosts.placement([ha_router.id]) == {ha_router.id: []}
    with store.unit_of_work() as repo:
        repo.delete_router(ha_router.id)
    assert [kind for *_, kind in change_rows(db_path)] == ["DELETED"]
    assert json.loads(json.dumps(sql(db_path, "SELECT count(*) FROM agents"))) == [[0]]
