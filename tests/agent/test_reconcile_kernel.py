"""reconcile() against the real kernel, in namespaces the test creates."""

from __future__ import annotations

import os
import subprocess

import pytest
from agent_support import FOREIGN_RULESET, World, foreign_ruleset, nft, table_handle

from cthm.agent import Action, Agent, LocalStoreSource
from cthm.domain import Assignment, Protocol, Status, new_binding

pytestmark = pytest.mark.kernel


def test_apply_read_back_and_report_active(world: World) -> None:
    router = world.router("r")
    ftp = world.bind(router, "tcp", 21, "ftp")
    tftp = world.bind(router, "udp", 69, "tftp")
    ras = world.bind(router, "udp", 1719, "h323")

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.APPLIED
    table = world.backend.read(router.namespace)
    assert table is not None
    assert set(table.assignments) == {
        Assignment(Protocol.TCP, 21, "ftp"),
        Assignment(Protocol.UDP, 69, "tftp"),
        Assignment(Protocol.UDP, 1719, "RAS"),
    }
    text = nft(router.namespace, "list", "table", "inet", "cthm")
    assert "hook prerouting priority filter" in text
    stored, bindings = world.fresh(router)
    assert stored.status is Status.ACTIVE
    assert {b.id: b.status for b in bindings} == {
        ftp.id: Status.ACTIVE,
        tftp.id: Status.ACTIVE,
        ras.id: Status.ACTIVE,
    }


def test_second_reconcile_writes_nothing(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.reconciler.reconcile(router.id)
    handle = table_handle(router.namespace)
    before = nft(router.namespace, "-a", "list", "ruleset")

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.NOOP
    assert table_handle(router.namespace) == handle
    assert nft(router.namespace, "-a", "list", "ruleset") == before


def test_add_and_delete_one_binding_among_many_is_a_partial_sync(world: World) -> None:
    router = world.router("r")
    with world.store.unit_of_work() as repo:
        for port in range(2000, 2300):
            repo.add_binding(
                new_binding(world.catalog, router, protocol="tcp", port=port, helper="ftp")
            )
    assert world.agent.reconciler.reconcile(router.id).sync == "full"  # the first look

    added = world.bind(router, "tcp", 21, "ftp")
    result = world.agent.reconciler.reconcile(router.id)

    assert (result.action, result.sync) == (Action.APPLIED, "partial")
    table = world.backend.read(router.namespace)
    assert table is not None
    assert len(table.assignments) == 301
    assert Assignment(Protocol.TCP, 21, "ftp") in table.assignments
    assert world.fresh(router)[0].status is Status.ACTIVE
    assert {b.status for b in world.fresh(router)[1]} == {Status.ACTIVE}

    with world.store.unit_of_work() as repo:
        repo.delete_binding(router.id, added.id)
    result = world.agent.reconciler.reconcile(router.id)

    assert (result.action, result.sync) == (Action.APPLIED, "partial")
    table = world.backend.read(router.namespace)
    assert table is not None
    assert len(table.assignments) == 300
    assert Assignment(Protocol.TCP, 21, "ftp") not in table.assignments
    assert world.agent.sync_all()[0].action is Action.NOOP  # a full look agrees


def test_update_swaps_helper_in_one_transaction(world: World) -> None:
    router = world.router("r")
    binding = world.bind(router, "tcp", 5060, "sip")
    world.agent.reconciler.reconcile(router.id)
    with world.store.unit_of_work() as repo:
        repo.update_binding(router.id, binding.id, helper="h323")  # tcp -> Q.931

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.APPLIED
    table = world.backend.read(router.namespace)
    assert table is not None
    assert table.assignments == (Assignment(Protocol.TCP, 5060, "Q.931"),)
    text = nft(router.namespace, "list", "table", "inet", "cthm")
    assert '"sip"' not in text, "the old helper object must be gone"


def test_foreign_tables_survive_every_operation_and_delete_removes_only_ours(
    world: World,
) -> None:
    router = world.router("r")
    nft(router.namespace, "-f", "-", stdin=FOREIGN_RULESET)
    foreign = foreign_ruleset(router.namespace)
    assert "table inet filter" in foreign
    assert "table ip nat" in foreign

    binding = world.bind(router, "tcp", 21, "ftp")
    world.agent.reconciler.reconcile(router.id)
    assert foreign_ruleset(router.namespace) == foreign
    with world.store.unit_of_work() as repo:
        repo.update_binding(router.id, binding.id, port=2121)
    world.agent.reconciler.reconcile(router.id)
    assert foreign_ruleset(router.namespace) == foreign
    with world.store.unit_of_work() as repo:
        repo.delete_router(router.id)

    result = world.agent.reconciler.reconcile(router.id)

    assert result.action is Action.REMOVED
    assert world.backend.read(router.namespace) is None
    assert foreign_ruleset(router.namespace) == foreign
    assert "cthm" not in nft(router.namespace, "list", "tables")
    with world.store.unit_of_work(write=False) as repo:
        assert repo.tombstones() == {}


def test_garbage_in_our_table_is_removed(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.reconciler.reconcile(router.id)
    nft(router.namespace, "add", "chain", "inet", "cthm", "intruder")
    nft(
        router.namespace,
        "add",
        "rule",
        "inet",
        "cthm",
        "prerouting",
        "tcp",
        "dport",
        "23",
        "accept",
    )

    # Found by a full sync (the periodic resync's), not by a partial one, which trusts the
    # table it last verified.
    result = world.agent.sync_all()[0]

    assert result.action is Action.APPLIED
    text = nft(router.namespace, "list", "table", "inet", "cthm")
    assert "intruder" not in text
    assert "dport 23" not in text
    assert world.agent.reconciler.reconcile(router.id).action is Action.NOOP


def test_missing_namespace_is_error_then_recovers_when_created(world: World) -> None:
    router = world.router("late", create_namespace=False)
    binding = world.bind(router, "udp", 69, "tftp")
    world.agent.start()
    world.agent.enqueue([router.id])
    assert world.agent.wait_settled(10)
    stored, bindings = world.fresh(router)
    assert stored.status is Status.ERROR
    assert stored.status_reason == f"namespace {router.namespace} not found"
    assert bindings[0].status is Status.ERROR

    world.netns.create("late")

    def active() -> bool:
        current, _ = world.fresh(router)
        return current.status is Status.ACTIVE

    assert world.agent.queue.wait_until(active, timeout=10), "router did not recover"
    table = world.backend.read(router.namespace)
    assert table is not None
    assert table.assignments == (Assignment(Protocol.UDP, 69, "tftp"),)
    _, bindings = world.fresh(router)
    assert [(b.id, b.status) for b in bindings] == [(binding.id, Status.ACTIVE)]


def test_store_changes_wake_the_agent(world: World) -> None:
    router = world.router("r")
    world.store.subscribe(world.agent.enqueue)
    world.agent.start()
    assert world.agent.wait_settled(10)

    world.bind(router, "tcp", 21, "ftp")

    def in_kernel() -> bool:
        table = world.backend.read(router.namespace)
        return table is not None and table.assignments == (Assignment(Protocol.TCP, 21, "ftp"),)

    assert world.agent.queue.wait_until(in_kernel, timeout=5)


def test_one_broken_router_does_not_block_others(world: World) -> None:
    broken = world.router("gone", create_namespace=False)
    world.bind(broken, "tcp", 21, "ftp")
    healthy = [world.router(f"ok{i}") for i in range(3)]
    for router in healthy:
        world.bind(router, "tcp", 21, "ftp")

    results = world.agent.sync_all()

    by_id = {r.router_id: r for r in results}
    assert by_id[broken.id].action is Action.FAILED
    for router in healthy:
        assert by_id[router.id].action is Action.APPLIED
        assert world.fresh(router)[0].status is Status.ACTIVE


def test_periodic_resync_repairs_a_table_changed_behind_our_back(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    agent = Agent(
        LocalStoreSource(world.store),
        world.backend,
        world.catalog,
        resync_interval=0.2,
        sweep_orphans=False,  # the host's other namespaces are not this test's
    )
    agent.start()
    try:
        assert agent.wait_settled(10)
        nft(router.namespace, "delete", "table", "inet", "cthm")  # drift: no event tells us

        def repaired() -> bool:
            table = world.backend.read(router.namespace)
            return table is not None and table.assignments == (Assignment(Protocol.TCP, 21, "ftp"),)

        assert agent.queue.wait_until(repaired, timeout=10), "drift was not repaired"
    finally:
        assert agent.stop(timeout=10)


def test_agent_learns_the_kernels_helpers_at_start_in_a_namespace_of_its_own(
    world: World,
) -> None:
    agent = Agent(
        LocalStoreSource(world.store),
        world.backend,
        world.catalog,
        probe_at_start=True,
        sweep_orphans=False,
    )
    agent.start()
    try:
        expected = {(s.name, p) for s in world.catalog.kernel_helpers for p in s.protocols}
        assert agent.queue.wait_until(lambda: set(agent.capabilities.snapshot()) == expected, 10)
        assert all(agent.capabilities.snapshot().values()), "every catalog helper exists here"
    finally:
        assert agent.stop(timeout=10)
    ours = f"cthm-probe-{os.getpid()}-"
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert ours not in out.stdout, "the probe namespace must be deleted"
