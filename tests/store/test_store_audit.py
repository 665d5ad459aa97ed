"""The audit trail in the store: one row per change, in the change's own transaction.

Rows are read back with plain sqlite3, not through the code under test.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cthm.domain import (
    BindingConflict,
    Conflict,
    Direction,
    HelperBinding,
    ListQuery,
    Protocol,
    Router,
    SortDir,
    Status,
    new_binding,
    new_router,
)
from cthm.store import AuditContext, Store
from support.store import CATALOG, Snapshot, refuse_audit_inserts

Row = dict[str, Any]

CONTEXT = AuditContext(request_id="req-1", token_id="tok-1", project_id="caller")


def audit_rows(db_path: Path) -> list[Row]:
    connection = sqlite3.connect(db_path)
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute("SELECT * FROM audit_events ORDER BY time, id").fetchall()
    finally:
        connection.close()
    result = []
    for row in rows:
        item = dict(row)
        for key in ("before", "after"):
            item[key] = None if item[key] is None else json.loads(item[key])
        result.append(item)
    return result


def router_values(router: Router, **changes: Any) -> Row:
    values = {
        "id": router.id,
        "name": router.name,
        "project_id": router.project_id,
        "namespace": router.namespace,
        "revision_number": router.revision_number,
    }
    return {**values, **changes}


def binding_values(binding: HelperBinding, **changes: Any) -> Row:
    values = {
        "id": binding.id,
        "router_id": binding.router_id,
        "project_id": binding.project_id,
        "protocol": binding.protocol.value,
        "port": binding.port,
        "helper": binding.helper,
        "direction": binding.direction.value,
        "revision_number": binding.revision_number,
    }
    return {**values, **changes}


@pytest.fixture
def audit_lines(caplog: pytest.LogCaptureFixture) -> Callable[[], list[Row]]:
    caplog.set_level(logging.INFO, logger="cthm.audit")

    def lines() -> list[Row]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "cthm.audit"]

    return lines


def _only(rows: list[Row]) -> Row:
    assert len(rows) == 1, rows
    return rows[0]


# --- one row per change ------------------------------------------------------------------------


def test_router_changes_are_recorded_with_before_and_after(store: Store, db_path: Path) -> None:
    with store.unit_of_work(audit=CONTEXT) as repo:
        created = repo.add_router(new_router(name="edge", project_id="p1"))
    row = _only(audit_rows(db_path))
    assert row["action"] == "create_router"
    assert row["target_type"] == "router"
    assert row["target_id"] == created.id
    assert row["target_project_id"] == "p1"
    assert row["outcome"] == "success"
    assert row["status_code"] == 201
    assert row["before"] is None
    assert row["after"] == router_values(created)
    assert (row["request_id"], row["token_id"], row["project_id"]) == ("req-1", "tok-1", "caller")

    with store.unit_of_work(audit=CONTEXT) as repo:
        renamed = repo.update_router(created.id, name="core")
    update = audit_rows(db_path)[1]
    assert update["action"] == "update_router"
    assert update["status_code"] == 200
    assert update["before"] == router_values(created)
    assert update["after"] == router_values(created, name="core", revision_number=2)
    assert renamed.revision_number == 2


def test_binding_changes_are_recorded_with_before_and_after(
    store: Store, db_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router(project_id="p2")
    with store.unit_of_work(audit=CONTEXT) as repo:
        binding = repo.add_binding(
            new_binding(CATALOG, router, protocol="udp", port=69, helper="tftp")
        )
    with store.unit_of_work(audit=CONTEXT) as repo:
        updated = repo.update_binding(router.id, binding.id, port=6969)
    with store.unit_of_work(audit=CONTEXT) as repo:
        repo.delete_binding(router.id, binding.id)

    create, update, delete = audit_rows(db_path)[1:]
    for row in (create, update, delete):
        assert row["target_type"] == "conntrack_helper"
        assert row["target_id"] == binding.id
        assert row["target_project_id"] == "p2"
        assert row["outcome"] == "success"
    assert (create["action"], create["status_code"]) == ("create_router_conntrack_helper", 201)
    assert create["before"] is None
    assert create["after"] == binding_values(binding)
    assert (update["action"], update["status_code"]) == ("update_router_conntrack_helper", 200)
    assert update["before"] == binding_values(binding)
    assert update["after"] == binding_values(binding, port=6969, revision_number=2)
    assert updated.port == 6969
    assert (delete["action"], delete["status_code"]) == ("delete_router_conntrack_helper", 204)
    assert delete["before"] == binding_values(updated)
    assert delete["after"] is None


def test_a_direction_change_is_recorded(
    store: Store, db_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router(project_id="p2")
    with store.unit_of_work(audit=CONTEXT) as repo:
        binding = repo.add_binding(
            new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp", direction="output")
        )
    with store.unit_of_work(audit=CONTEXT) as repo:
        repo.update_binding(router.id, binding.id, direction=Direction.INGRESS)

    create, update = audit_rows(db_path)[1:]
    assert create["after"]["direction"] == "output"
    assert update["before"] == binding_values(binding)
    assert update["after"] == binding_values(binding, direction="ingress", revision_number=2)


def test_deleting_a_router_records_the_bindings_that_went_with_it(
    store: Store,
    db_path: Path,
    make_router: Callable[..., Router],
    make_binding: Callable[..., HelperBinding],
) -> None:
    router = make_router(name="gone", project_id="p3")
    tftp = make_binding(router, "udp", 69, "tftp")
    ftp = make_binding(router, "tcp", 21, "ftp")
    with store.unit_of_work(audit=CONTEXT) as repo:
        before = repo.get_router(router.id)
        repo.delete_router(router.id)
    row = audit_rows(db_path)[-1]
    assert row["action"] == "delete_router"
    assert row["status_code"] == 204
    assert row["after"] is None
    # In (protocol, port) order: tcp 21 before udp 69.
    expected = router_values(before)
    expected["conntrack_helpers"] = [binding_values(ftp), binding_values(tftp)]
    assert row["before"] == expected
    assert len(audit_rows(db_path)) == 4, "one row per change, not one per removed binding"


def test_without_a_context_changes_are_recorded_anonymously(store: Store, db_path: Path) -> None:
    with store.unit_of_work() as repo:
        repo.add_router(new_router(name="r", project_id="p"))
    row = _only(audit_rows(db_path))
    assert (row["request_id"], row["token_id"], row["project_id"]) == ("", None, None)
    assert row["action"] == "create_router"


def test_status_writes_and_no_op_updates_are_not_recorded(
    store: Store,
    db_path: Path,
    make_router: Callable[..., Router],
    make_binding: Callable[..., HelperBinding],
) -> None:
    router = make_router(name="same")
    binding = make_binding(router)
    recorded = len(audit_rows(db_path))
    with store.unit_of_work() as repo:
        current = repo.get_router(router.id)
        assert repo.set_router_status(
            router.id, Status.ACTIVE, "", revision_number=current.revision_number
        )
        assert repo.set_binding_status(binding.id, Status.ACTIVE, "", revision_number=1)
        repo.set_binding_statuses([(binding.id, 1, Status.ERROR, "kernel said no")])
        repo.update_router(router.id, name="same")
        repo.update_binding(router.id, binding.id, protocol=Protocol.TCP, port=21, helper="ftp")
    with store.unit_of_work(write=False) as repo:
        assert repo.get_binding(router.id, binding.id).status is Status.ERROR
    assert len(audit_rows(db_path)) == recorded


# --- atomicity -----------------------------------------------------------------------------------


def test_a_change_whose_audit_row_cannot_be_written_is_rolled_back(
    store: Store,
    db_path: Path,
    snapshot: Callable[[], Snapshot],
    make_router: Callable[..., Router],
    make_binding: Callable[..., HelperBinding],
    notifications: list[frozenset[str]],
    audit_lines: Callable[[], list[Row]],
) -> None:
    router = make_router(name="kept", project_id="p")
    binding = make_binding(router)
    recorded = audit_rows(db_path)
    lines_before = audit_lines()
    notified = list(notifications)
    refuse_audit_inserts(db_path)
    before = snapshot()

    changes: list[Callable[[Any], object]] = [
        lambda repo: repo.add_router(new_router(name="new", project_id="p")),
        lambda repo: repo.update_router(router.id, name="renamed"),
        lambda repo: repo.delete_router(router.id),
        lambda repo: repo.add_binding(
            new_binding(CATALOG, router, protocol="udp", port=69, helper="tftp")
        ),
        lambda repo: repo.update_binding(router.id, binding.id, port=2121),
        lambda repo: repo.delete_binding(router.id, binding.id),
    ]
    for change in changes:
        # The store maps the refused insert (a constraint failure) to a Conflict.
        with pytest.raises(Conflict), store.unit_of_work(audit=CONTEXT) as repo:
            change(repo)
        assert snapshot() == before
    assert audit_rows(db_path) == recorded
    assert audit_lines() == lines_before, "nothing is logged for a change that was undone"
    assert notifications == notified, "agents are not told of a change that was undone"


def test_a_change_that_fails_leaves_no_audit_row(
    store: Store,
    db_path: Path,
    snapshot: Callable[[], Snapshot],
    make_router: Callable[..., Router],
    make_binding: Callable[..., HelperBinding],
    audit_lines: Callable[[], list[Row]],
) -> None:
    router = make_router(name="r", project_id="p")
    make_binding(router, "tcp", 21, "ftp")
    recorded = audit_rows(db_path)
    lines_before = audit_lines()
    before = snapshot()

    def change_then_conflict() -> None:
        # The first change is made and recorded, the second fails: both are undone together.
        with store.unit_of_work(audit=CONTEXT) as repo:
            repo.update_router(router.id, name="renamed")
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))

    def change_then_fail() -> None:
        with store.unit_of_work(audit=CONTEXT) as repo:
            repo.add_router(new_router(name="r2", project_id="p"))
            raise RuntimeError("the request failed after the change")

    with pytest.raises(BindingConflict):
        change_then_conflict()
    with pytest.raises(RuntimeError):
        change_then_fail()

    assert snapshot() == before
    assert audit_rows(db_path) == recorded
    assert audit_lines() == lines_before


# --- JSON log lines ---------------------------------------------------------------------------


def test_each_committed_row_is_logged_as_one_json_line_after_the_commit(
    store: Store, db_path: Path, audit_lines: Callable[[], list[Row]]
) -> None:
    seen_in_unit_of_work: list[Row] = []
    with store.unit_of_work(audit=CONTEXT) as repo:
        router = repo.add_router(new_router(name="logged", project_id="p"))
        repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))
        seen_in_unit_of_work.extend(audit_lines())
    assert seen_in_unit_of_work == [], "a line before the commit could tell of an undone change"
    lines = audit_lines()
    assert [line["action"] for line in lines] == [
        "create_router",
        "create_router_conntrack_helper",
    ]
    rows = audit_rows(db_path)
    for line, row in zip(lines, rows, strict=True):
        assert line.keys() == row.keys()
        stored_time = datetime.fromisoformat(row["time"]).replace(tzinfo=UTC)
        assert datetime.fromisoformat(line["time"]) == stored_time
        assert line["time"].endswith("Z")
        assert {k: v for k, v in line.items() if k != "time"} == {
            k: v for k, v in row.items() if k != "time"
        }


# --- denied attempts --------------------------------------------------------------------------


def test_a_denied_attempt_writes_and_logs_one_row_in_its_own_transaction(
    store: Store,
    db_path: Path,
    snapshot: Callable[[], Snapshot],
    audit_lines: Callable[[], list[Row]],
) -> None:
    before = snapshot()
    store.submit_denied(
        CONTEXT,
        action="delete_router",
        target_type="router",
        target_id="r-1",
        target_project_id="other",
        status_code=404,
        detail="DELETE /v2.0/routers/r-1",
    )
    assert store.flush_denied()
    row = _only(audit_rows(db_path))
    assert row["outcome"] == "denied"
    assert row["status_code"] == 404
    assert (row["action"], row["target_type"], row["target_id"]) == (
        "delete_router",
        "router",
        "r-1",
    )
    assert row["target_project_id"] == "other"
    assert (row["before"], row["after"]) == (None, None)
    assert row["detail"] == "DELETE /v2.0/routers/r-1"
    assert (row["request_id"], row["token_id"], row["project_id"]) == ("req-1", "tok-1", "caller")
    assert snapshot() == before, "a denied attempt changes nothing"
    line = _only(audit_lines())
    assert line["id"] == row["id"]
    assert line["outcome"] == "denied"


def test_recorded_text_is_bounded_and_token_shaped_text_is_masked(
    store: Store, db_path: Path, audit_lines: Callable[[], list[Row]]
) -> None:
    secret = "cthm_" + "A" * 43
    store.submit_denied(
        AuditContext(request_id="r" * 100, token_id=None, project_id=None),
        action="authenticate",
        target_type="router",
        target_id=secret,
        target_project_id=None,
        status_code=401,
        detail=f"GET /v2.0/routers/{secret}/" + "x" * 2000,
    )
    assert store.flush_denied()
    row = _only(audit_rows(db_path))
    assert len(row["request_id"]) == 64
    assert len(row["detail"]) == 1024
    assert len(row["target_id"]) <= 64
    assert secret not in json.dumps(row)
    assert secret not in json.dumps(audit_lines())
    assert row["detail"].startswith("GET /v2.0/routers/cthm_[redacted]/x")


# --- listing -----------------------------------------------------------------------------------


def test_listing_filters_by_field_and_time_window_in_time_order(
    store: Store, db_path: Path, make_router: Callable[..., Router]
) -> None:
    first = make_router(name="a", project_id="p")
    second = make_router(name="b", project_id="q")
    store.submit_denied(
        CONTEXT,
        action="get_router",
        target_type="router",
        target_id=first.id,
        target_project_id="p",
        status_code=404,
    )
    assert store.flush_denied()
    rows = audit_rows(db_path)
    assert len(rows) == 3
    with store.unit_of_work(write=False) as repo:
        everything = repo.audit.list(ListQuery(sort=(("time", SortDir.ASC),)))
        assert [e["id"] for e in everything] == [r["id"] for r in rows]
        newest_first = repo.audit.list(ListQuery(sort=(("time", SortDir.DESC),)))
        assert [e["id"] for e in newest_first] == [r["id"] for r in reversed(rows)]

        denied = repo.audit.list(ListQuery(filters={"outcome": ("denied",)}))
        assert [e["target_id"] for e in denied] == [first.id]
        of_q = repo.audit.list(ListQuery(filters={"target_project_id": ("q",)}))
        assert [e["target_id"] for e in of_q] == [second.id]

        second_time = datetime.fromisoformat(everything[1]["time"])
        window = repo.audit.list(
            ListQuery(sort=(("time", SortDir.ASC),)),
            since=second_time,
            until=second_time + timedelta(microseconds=1),
        )
        assert [e["id"] for e in window] == [everything[1]["id"]]
        # The same instant written with another offset selects the same events.
        shifted = second_time.astimezone(datetime.now().astimezone().tzinfo)
        since_shifted = repo.audit.list(ListQuery(), since=shifted.astimezone(UTC))
        assert {e["id"] for e in since_shifted} == {e["id"] for e in everything[1:]}
        assert (
            repo.audit.list(ListQuery(), until=datetime.fromisoformat(everything[0]["time"])) == []
        )

        page = repo.audit.list(
            ListQuery(sort=(("time", SortDir.ASC),), limit=1, marker=everything[0]["id"])
        )
        assert [e["id"] for e in page] == [everything[1]["id"]]
