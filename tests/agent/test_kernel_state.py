"""The agent's verified state (Agent.kernel_state) against the real kernel and a real store."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from agent_support import World, nft

from cthm.agent import Action
from cthm.domain import Assignment, Protocol

pytestmark = pytest.mark.kernel


def test_nothing_known_before_the_agent_looks(world: World) -> None:
    router = world.router("r")
    assert world.agent.kernel_state(router.id) is None


def test_apply_is_verified_and_recorded(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.bind(router, "udp", 1719, "h323")
    before = datetime.now(UTC)

    [result] = world.agent.sync_all()

    assert result.action is Action.APPLIED
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert state.in_sync is True
    assert state.namespace == router.namespace
    assert state.verified_at is not None
    assert before <= state.verified_at <= datetime.now(UTC)
    expected = (Assignment(Protocol.TCP, 21, "ftp"), Assignment(Protocol.UDP, 1719, "RAS"))
    assert set(state.actual or ()) == set(expected)
    assert set(state.desired or ()) == set(expected)
    assert state.table_present is True
    assert state.garbage == ()
    assert state.last_error is None
    assert state.drift_repairs == 0


def test_a_noop_resync_moves_verified_at_and_writes_nothing_to_the_database(
    world: World,
) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()
    first = world.agent.kernel_state(router.id)
    assert first is not None
    stored = world.fresh(router)

    [result] = world.agent.sync_all()

    assert result.action is Action.NOOP
    second = world.agent.kernel_state(router.id)
    assert second is not None
    assert second.in_sync is True
    assert first.verified_at is not None
    assert second.verified_at is not None
    assert second.verified_at >= first.verified_at
    assert world.fresh(router) == stored, "a no-op resync must not write to the database"


def test_flushed_table_is_drift_counted_logged_and_repaired(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()

    nft(router.namespace, "flush", "table", "inet", "cthm")
    with caplog.at_level("WARNING", logger="cthm.agent"):
        [result] = world.agent.sync_all()

    assert result.action is Action.APPLIED
    assert result.drift is True
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert state.drift_repairs == 1
    assert state.in_sync is True
    assert world.agent.counts["drift"] == 1
    table = world.backend.read(router.namespace)
    assert table is not None
    assert table.assignments == (Assignment(Protocol.TCP, 21, "ftp"),)
    drift_lines = [r for r in caplog.records if "drift" in r.getMessage()]
    assert len(drift_lines) == 1
    line = drift_lines[0].getMessage()
    assert router.namespace in line
    assert "tcp/21=ftp" in line
    # Repaired: the next resync finds nothing to do and counts nothing more.
    assert world.agent.sync_all()[0].action is Action.NOOP
    assert world.agent.counts["drift"] == 1


def test_a_rule_added_to_our_chain_is_drift(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()
    nft(router.namespace, "add", "rule", "inet", "cthm", "prerouting", "tcp", "dport", "23", "drop")

    [result] = world.agent.sync_all()

    assert result.drift is True
    assert "dport 23" not in nft(router.namespace, "list", "table", "inet", "cthm")
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert (state.drift_repairs, state.in_sync, state.garbage) == (1, True, ())


def test_a_users_change_is_not_drift(world: World) -> None:
    router = world.router("r")
    binding = world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()
    with world.store.unit_of_work() as repo:
        repo.update_binding(router.id, binding.id, port=2121)

    [result] = world.agent.sync_all()

    assert result.action is Action.APPLIED
    assert result.drift is False
    assert world.agent.counts["drift"] == 0
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert state.drift_repairs == 0
    assert state.actual == (Assignment(Protocol.TCP, 2121, "ftp"),)


def test_missing_namespace_sets_last_error_then_recovers(world: World) -> None:
    router = world.router("late", create_namespace=False)
    world.bind(router, "udp", 69, "tftp")

    [failed] = world.agent.sync_all()

    assert failed.action is Action.FAILED
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert state.last_error == f"namespace {router.namespace} not found"
    assert state.last_error_at is not None
    assert state.in_sync is False
    assert state.verified_at is None
    assert state.actual == ()

    world.netns.create("late")
    [applied] = world.agent.sync_all()

    assert applied.action is Action.APPLIED
    assert applied.drift is False, "never verified before: not drift"
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert state.in_sync is True
    assert state.verified_at is not None
    assert state.last_error_at is not None
    # The last error is kept, with its time, older than the verification that followed it.
    assert state.last_error_at < state.verified_at


def test_namespace_deleted_and_recreated_is_drift_repaired(world: World) -> None:
    router = world.router("ns")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()

    world.netns.delete(router.namespace)
    assert world.agent.sync_all()[0].action is Action.FAILED
    gone = world.agent.kernel_state(router.id)
    assert gone is not None
    assert gone.in_sync is False
    world.netns.create("ns")
    [result] = world.agent.sync_all()

    assert result.drift is True
    state = world.agent.kernel_state(router.id)
    assert state is not None
    assert (state.in_sync, state.drift_repairs) == (True, 1)
    assert world.agent.counts["drift"] == 1


def test_deleted_router_is_forgotten(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()
    with world.store.unit_of_work() as repo:
        repo.delete_router(router.id)

    assert world.agent.sync_all()[0].action is Action.REMOVED

    assert world.agent.kernel_state(router.id) is None
