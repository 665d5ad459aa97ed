"""An agent whose full syncs are shared with kernel-worker processes (issue 14,
netfilter/sync_processes.py), on the real kernel and a real SQLite store: a cold sync of
several routers ends with every router and binding ACTIVE and every table as desired (read by
a reader of its own), some of them written by the workers; a partial sync afterwards runs in
the agent's process on the table a worker verified; stopping leaves no worker running."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_support import World

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import ListQuery, Status, assignments_for
from cthm.netfilter import NftablesBackend, SyncProcesses, make_runner
from cthm.store import Store, deployment_id
from cthm.testing import NamespaceFactory

pytestmark = pytest.mark.kernel

ROUTERS = 8


def test_a_cold_sync_shared_with_worker_processes_verifies_every_router(
    tmp_path: Path, netns: NamespaceFactory
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    owner = deployment_id(store)
    processes = SyncProcesses(2, owner=owner, start_after=0)
    backend = NftablesBackend(make_runner("libnftables"), owner=owner, processes=processes)
    world = World(store, backend, netns)
    agent = Agent(
        LocalStoreSource(store),
        backend,
        world.catalog,
        workers=4,
        resync_interval=3600,
        sweep_orphans=False,
    )
    reader = NftablesBackend(make_runner("libnftables"), owner=owner)
    try:
        routers = [world.router(f"cp{i}") for i in range(ROUTERS)]
        for i, router in enumerate(routers):
            world.bind(router, "tcp", 21, "ftp")
            world.bind(router, "udp", 69 + i, "tftp")
        assert processes.wait_ready(30)
        pids = processes.pids
        agent.start()
        assert agent.wait_settled(60)
        for router in routers:
            fresh, bindings = world.fresh(router)
            assert fresh.status is Status.ACTIVE
            assert {b.status for b in bindings} == {Status.ACTIVE}
            want = reader.desired(assignments_for(world.catalog, bindings))
            assert reader.read(router.namespace) == want
        assert processes.counts["remote"] > 0  # the workers did some of them
        agent.stop()
        # A partial sync in this process on a table a worker wrote and verified.
        added = world.bind(routers[0], "tcp", 2121, "ftp")
        result = agent.reconciler.reconcile(routers[0].id)
        assert result.sync == "partial"
        with store.unit_of_work(write=False) as repo:
            bindings = repo.list_bindings(ListQuery(), routers[0].id)
        assert added.id in {b.id for b in bindings}
        assert reader.read(routers[0].namespace) == reader.desired(
            assignments_for(world.catalog, bindings)
        )
    finally:
        agent.stop()
        backend.close()
        reader.close()
        store.close()
    assert processes.pids == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
