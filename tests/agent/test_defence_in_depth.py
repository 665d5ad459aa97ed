"""Defence in depth: a database edited behind the API's back never reaches the kernel.

The API validates everything on the way in; these tests bypass it with raw SQL and check that
the agent validates again on the way out, marks what fails ERROR, and still applies the rest.
"""

from __future__ import annotations

import sqlite3

import pytest
from agent_support import FOREIGN_RULESET, World, foreign_ruleset, nft

from cthm.agent import Action
from cthm.domain import Assignment, ListQuery, Protocol, Status

pytestmark = pytest.mark.kernel

HOSTILE_HELPERS = ['ftp" ; flush ruleset ; #', "ftp\nflush ruleset", "$(reboot)", "../ftp"]


def raw_sql(world: World, statement: str, *params: object) -> None:
    path = world.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        connection.execute(statement, params)


def stored_status(world: World, table: str, row_id: str) -> tuple[str, str]:
    """(status, status_reason) of a row of `table` as the database file holds it."""
    path = world.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        status, status_reason = connection.execute(
            f"SELECT status, status_reason FROM {table} WHERE id = ?", (row_id,)
        ).fetchone()
    return status, status_reason


def statuses(world: World, router_id: str) -> dict[int, tuple[Status, str]]:
    with world.store.unit_of_work(write=False) as repo:
        return {
            b.port: (b.status, b.status_reason) for b in repo.list_bindings(ListQuery(), router_id)
        }


@pytest.mark.parametrize("helper", HOSTILE_HELPERS)
def test_tampered_helper_never_reaches_nft_and_is_marked_error(world: World, helper: str) -> None:
    router = world.router("r")
    nft(router.namespace, "-f", "-", stdin=FOREIGN_RULESET)
    foreign = foreign_ruleset(router.namespace)
    world.bind(router, "tcp", 21, "ftp")
    bad = world.bind(router, "tcp", 2121, "ftp")
    raw_sql(world, "UPDATE conntrack_helpers SET helper = ? WHERE id = ?", helper, bad.id)

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.APPLIED
    table = world.backend.read(router.namespace)
    assert table is not None
    assert table.assignments == (Assignment(Protocol.TCP, 21, "ftp"),)
    assert foreign_ruleset(router.namespace) == foreign, "flush ruleset must not have run"
    found = statuses(world, router.id)
    assert found[21] == (Status.ACTIVE, "")
    assert found[2121][0] is Status.ERROR
    assert "unknown helper" in found[2121][1]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("port", 70000, "invalid port"),
        ("port", -1, "invalid port"),
        ("port", "21; flush ruleset", "invalid port"),
        ("protocol", "icmp", "invalid protocol"),
        ("protocol", "tcp dport 1 accept", "invalid protocol"),
    ],
)
def test_tampered_port_or_protocol_is_refused(
    world: World, column: str, value: object, reason: str
) -> None:
    router = world.router("r")
    world.bind(router, "udp", 69, "tftp")
    bad = world.bind(router, "tcp", 2121, "ftp")
    raw_sql(world, f"UPDATE conntrack_helpers SET {column} = ? WHERE id = ?", value, bad.id)

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.APPLIED
    table = world.backend.read(router.namespace)
    assert table is not None
    assert table.assignments == (Assignment(Protocol.UDP, 69, "tftp"),)
    with world.store.unit_of_work(write=False) as repo:
        stored_router = repo.get_router(router.id)
    assert stored_router.status is Status.ACTIVE
    assert stored_router.status_reason == "1 of 2 bindings could not be applied"
    status, status_reason = stored_status(world, "conntrack_helpers", bad.id)
    assert status == "ERROR"
    assert reason in status_reason


@pytest.mark.parametrize("namespace", ["-n; reboot", "../../etc", "a b", "x" * 300, ""])
def test_tampered_namespace_touches_no_namespace(world: World, namespace: str) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.reconciler.reconcile(router.id)
    before = nft(router.namespace, "list", "ruleset")
    raw_sql(world, "UPDATE routers SET namespace = ? WHERE id = ?", namespace, router.id)
    raw_sql(
        world,
        "UPDATE conntrack_helpers SET port = 2121, revision_number = revision_number + 1 "
        "WHERE router_id = ?",
        router.id,
    )

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.FAILED
    assert not result.retry
    assert nft(router.namespace, "list", "ruleset") == before, "nothing may be written anywhere"
    status, status_reason = stored_status(world, "routers", router.id)
    assert status == "ERROR"
    assert status_reason.startswith("refused: Invalid input for namespace")
