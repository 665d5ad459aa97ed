"""Binding direction in the store: migration 0004 on a database holding data, the unique key
per (router, protocol, port, direction), the CHECK on the column, and the repository reading
and writing the field everywhere (add, get, list filter and sort, update, conflicts, the
agent's desired state).

Rows are written and read with plain sqlite3 where the code under test must not be the judge.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cthm.domain import (
    BindingConflict,
    Direction,
    HelperBinding,
    HelperCatalog,
    ListQuery,
    Protocol,
    Router,
    SortDir,
    new_binding,
    new_router,
)
from cthm.store import Store
from cthm.store.tables import DEFAULT_DIRECTION, DIRECTION_CHECK

CATALOG = HelperCatalog()
ROUTER_ID = "6f1c5a52-2f7e-4d0b-9a57-3d3c1f0e8a01"
FTP_ID = "0b6f6c1e-58a4-4a51-9a47-8a8d5cf0e101"
TFTP_ID = "0b6f6c1e-58a4-4a51-9a47-8a8d5cf0e102"
STAMP = "2026-11-21 10:00:00.000000"


def sql(
    db_path: Path, statement: str, *params: object, check: bool = True
) -> list[tuple[object, ...]]:
    """One statement with plain sqlite3. check=False: the CHECK constraints are not enforced
    (an operator editing the file behind the API's back)."""
    connection = sqlite3.connect(db_path)
    try:
        if not check:
            connection.execute("PRAGMA ignore_check_constraints = ON")
        rows = connection.execute(statement, params).fetchall()
        connection.commit()
        return rows
    finally:
        connection.close()


def columns(db_path: Path, table: str) -> list[str]:
    return [str(row[1]) for row in sql(db_path, f"PRAGMA table_info({table})")]


def _add(
    store: Store, router: Router, protocol: str, port: int, helper: str, direction: str
) -> HelperBinding:
    with store.unit_of_work() as repo:
        binding = new_binding(
            CATALOG, router, protocol=protocol, port=port, helper=helper, direction=direction
        )
        return repo.add_binding(binding)


@pytest.fixture
def at_0003(db_path: Path) -> Store:
    """A store at revision 0003 holding a router with two bindings, written as 0003 wrote them."""
    store = Store(f"sqlite:///{db_path}")
    store.migrate("0003")
    assert "direction" not in columns(db_path, "conntrack_helpers")
    sql(
        db_path,
        "INSERT INTO routers VALUES (?, 'old', 'p', ?, 'ACTIVE', '', 3, ?, ?)",
        ROUTER_ID,
        f"qrouter-{ROUTER_ID}",
        STAMP,
        STAMP,
    )
    for binding_id, protocol, port, helper in (
        (FTP_ID, "tcp", 21, "ftp"),
        (TFTP_ID, "udp", 69, "tftp"),
    ):
        sql(
            db_path,
            "INSERT INTO conntrack_helpers VALUES (?, ?, 'p', ?, ?, ?, 'ACTIVE', '', 1, ?, ?)",
            binding_id,
            ROUTER_ID,
            protocol,
            port,
            helper,
            STAMP,
            STAMP,
        )
    return store


# --- migration 0004 ---------------------------------------------------------------------------


def test_upgrade_keeps_every_row_and_makes_it_ingress(at_0003: Store, db_path: Path) -> None:
    before = sql(db_path, "SELECT * FROM conntrack_helpers ORDER BY id")
    routers_before = sql(db_path, "SELECT * FROM routers")
    try:
        at_0003.migrate()
        after_columns = columns(db_path, "conntrack_helpers")
        after = sql(db_path, "SELECT * FROM conntrack_helpers ORDER BY id")
        # Every old column keeps its value; the new one says ingress.
        index = after_columns.index("direction")
        assert [row[:index] + row[index + 1 :] for row in after] == before
        assert [row[index] for row in after] == ["ingress", "ingress"]
        assert sql(db_path, "SELECT * FROM routers") == routers_before

        with at_0003.unit_of_work(write=False) as repo:
            ftp = repo.get_binding(ROUTER_ID, FTP_ID)
            desired, rejected = repo.desired_bindings(ROUTER_ID)
        assert (ftp.protocol, ftp.port, ftp.helper) == (Protocol.TCP, 21, "ftp")
        assert ftp.direction is Direction.INGRESS
        assert ftp.created_at == datetime(2026, 11, 21, 10, tzinfo=UTC)
        assert [b.direction for b in desired] == [Direction.INGRESS, Direction.INGRESS]
        assert rejected == []
    finally:
        at_0003.close()


def test_after_upgrade_the_unique_key_includes_the_direction(at_0003: Store, db_path: Path) -> None:
    try:
        at_0003.migrate()
        with at_0003.unit_of_work(write=False) as repo:
            router = repo.get_router(ROUTER_ID)
        # tcp/21 ingress exists (migrated): output on tcp/21 is another connection's helper.
        output = _add(at_0003, router, "tcp", 21, "ftp", "output")
        assert output.direction is Direction.OUTPUT
        with pytest.raises(BindingConflict) as raised:
            _add(at_0003, router, "tcp", 21, "ftp", "ingress")
        assert raised.value.existing_id == FTP_ID
        with pytest.raises(BindingConflict) as raised:
            _add(at_0003, router, "tcp", 21, "ftp", "output")
        assert raised.value.existing_id == output.id
    finally:
        at_0003.close()
    # The database itself holds the rule, not only the repository's check.
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        sql(
            db_path,
            "INSERT INTO conntrack_helpers VALUES "
            "('0b6f6c1e-58a4-4a51-9a47-8a8d5cf0e199', ?, 'p', 'tcp', 21, 'ftp', "
            "'PENDING', '', 1, ?, ?, 'output')",
            ROUTER_ID,
            STAMP,
            STAMP,
        )


def test_the_database_refuses_an_unknown_direction(store: Store, db_path: Path) -> None:
    with store.unit_of_work() as repo:
        router = repo.add_router(new_router(name="r", project_id="p"))
    binding = _add(store, router, "tcp", 21, "ftp", "ingress")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        sql(db_path, "UPDATE conntrack_helpers SET direction = 'sideways' WHERE id = ?", binding.id)
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        sql(db_path, "UPDATE conntrack_helpers SET direction = NULL WHERE id = ?", binding.id)
    assert sql(db_path, "SELECT direction FROM conntrack_helpers") == [("ingress",)]


def test_downgrade_to_0003_keeps_ingress_rows_and_refuses_to_drop_output_ones(
    at_0003: Store, db_path: Path
) -> None:
    try:
        at_0003.migrate()
        with at_0003.unit_of_work(write=False) as repo:
            router = repo.get_router(ROUTER_ID)
        output = _add(at_0003, router, "tcp", 21, "ftp", "output")
        with pytest.raises(RuntimeError, match="1 output conntrack helper"):
            at_0003.downgrade("0003")
        assert "direction" in columns(db_path, "conntrack_helpers")  # nothing half-done

        with at_0003.unit_of_work() as repo:
            repo.delete_binding(ROUTER_ID, output.id)
        at_0003.downgrade("0003")
        assert "direction" not in columns(db_path, "conntrack_helpers")
        ports = sql(db_path, "SELECT id, protocol, port, helper FROM conntrack_helpers ORDER BY id")
        assert ports == [(FTP_ID, "tcp", 21, "ftp"), (TFTP_ID, "udp", 69, "tftp")]
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):  # the old key is back
            sql(
                db_path,
                "INSERT INTO conntrack_helpers VALUES "
                "('0b6f6c1e-58a4-4a51-9a47-8a8d5cf0e199', ?, 'p', 'tcp', 21, 'ftp', "
                "'PENDING', '', 1, ?, ?)",
                ROUTER_ID,
                STAMP,
                STAMP,
            )
    finally:
        at_0003.close()


def test_the_schema_constants_are_the_domain_directions() -> None:
    assert Direction.INGRESS.value == DEFAULT_DIRECTION
    for direction in Direction:
        assert f"'{direction.value}'" in DIRECTION_CHECK
    assert DIRECTION_CHECK.count("'") == 2 * len(Direction)


# --- repository -------------------------------------------------------------------------------


def test_output_binding_round_trips(
    store: Store, db_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    created = _add(store, router, "tcp", 21, "ftp", "output")
    assert created.direction is Direction.OUTPUT
    assert sql(db_path, "SELECT direction FROM conntrack_helpers WHERE id = ?", created.id) == [
        ("output",)
    ]
    with store.unit_of_work(write=False) as repo:
        assert repo.get_binding(router.id, created.id).direction is Direction.OUTPUT
        assert [b.direction for b in repo.list_bindings(ListQuery(), router.id)] == [
            Direction.OUTPUT
        ]
        assert [b.direction for b in repo.bindings_of([router.id])[router.id]] == [Direction.OUTPUT]


def test_a_binding_made_without_a_direction_is_ingress(
    store: Store, make_router: Callable[..., Router], make_binding: Callable[..., HelperBinding]
) -> None:
    created = make_binding(make_router())
    assert created.direction is Direction.INGRESS


def test_conflict_messages_name_the_output_direction_only(
    store: Store, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    ingress = _add(store, router, "tcp", 21, "ftp", "ingress")
    output = _add(store, router, "tcp", 21, "ftp", "output")
    with pytest.raises(BindingConflict) as raised:
        _add(store, router, "tcp", 21, "ftp", "ingress")
    assert raised.value.message == (
        f"Router {router.id} already has conntrack helper {ingress.id} for tcp/21: "
        "a connection gets one helper"
    )
    with pytest.raises(BindingConflict) as raised:
        _add(store, router, "tcp", 21, "ftp", "output")
    assert raised.value.message == (
        f"Router {router.id} already has conntrack helper {output.id} for output tcp/21: "
        "a connection gets one helper"
    )


def test_update_changes_the_direction_and_checks_the_new_key(
    store: Store, db_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    ftp = _add(store, router, "tcp", 21, "ftp", "ingress")
    other = _add(store, router, "tcp", 2121, "ftp", "output")
    with store.unit_of_work() as repo:
        moved = repo.update_binding(router.id, ftp.id, direction=Direction.OUTPUT)
    assert moved.direction is Direction.OUTPUT
    assert moved.revision_number == 2
    # Same direction again: nothing to do, no new revision.
    with store.unit_of_work() as repo:
        same = repo.update_binding(router.id, ftp.id, direction=Direction.OUTPUT)
    assert same.revision_number == 2

    # The other binding onto tcp/21 output: taken. The row is unchanged.
    before = sql(db_path, "SELECT * FROM conntrack_helpers WHERE id = ?", other.id)
    with pytest.raises(BindingConflict) as raised, store.unit_of_work() as repo:
        repo.update_binding(router.id, other.id, port=21)
    assert raised.value.existing_id == ftp.id
    assert "output tcp/21" in raised.value.message
    assert sql(db_path, "SELECT * FROM conntrack_helpers WHERE id = ?", other.id) == before

    # Port and direction together onto the free ingress tcp/21: allowed.
    with store.unit_of_work() as repo:
        both = repo.update_binding(router.id, other.id, port=21, direction=Direction.INGRESS)
    assert (both.port, both.direction) == (21, Direction.INGRESS)


def test_list_filters_and_sorts_on_direction(
    store: Store, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    out21 = _add(store, router, "tcp", 21, "ftp", "output")
    in21 = _add(store, router, "tcp", 21, "ftp", "ingress")
    in69 = _add(store, router, "udp", 69, "tftp", "ingress")
    with store.unit_of_work(write=False) as repo:
        only_output = repo.list_bindings(
            ListQuery(filters={"direction": (Direction.OUTPUT,)}), router.id
        )
        ordered = repo.list_bindings(
            ListQuery(sort=(("direction", SortDir.DESC), ("port", SortDir.ASC))), router.id
        )
        # Keyset pagination over a direction sort: the page after out21 holds the ingress ones.
        after = repo.list_bindings(
            ListQuery(sort=(("direction", SortDir.DESC), ("port", SortDir.ASC)), marker=out21.id),
            router.id,
        )
    assert [b.id for b in only_output] == [out21.id]
    assert [b.id for b in ordered] == [out21.id, in21.id, in69.id]
    assert [b.id for b in after] == [in21.id, in69.id]


def test_desired_bindings_carry_direction_in_key_order(
    store: Store, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    _add(store, router, "tcp", 21, "ftp", "output")
    _add(store, router, "tcp", 21, "ftp", "ingress")
    _add(store, router, "udp", 69, "tftp", "output")
    with store.unit_of_work(write=False) as repo:
        desired, rejected = repo.desired_bindings(router.id)
    assert [(b.protocol.value, b.port, b.direction.value) for b in desired] == [
        ("tcp", 21, "ingress"),
        ("tcp", 21, "output"),
        ("udp", 69, "output"),
    ]
    assert rejected == []


def test_a_row_with_an_unknown_direction_is_rejected_not_rendered(
    store: Store, db_path: Path, make_router: Callable[..., Router]
) -> None:
    router = make_router()
    good = _add(store, router, "udp", 69, "tftp", "output")
    bad = _add(store, router, "tcp", 21, "ftp", "ingress")
    sql(
        db_path,
        "UPDATE conntrack_helpers SET direction = 'prerouting; flush' WHERE id = ?",
        bad.id,
        check=False,
    )
    with store.unit_of_work(write=False) as repo:
        desired, rejected = repo.desired_bindings(router.id)
    assert [b.id for b in desired] == [good.id]
    assert desired[0].direction is Direction.OUTPUT
    assert rejected == [
        (bad.id, 1, "refused: invalid direction 'prerouting; flush' in the database")
    ]
