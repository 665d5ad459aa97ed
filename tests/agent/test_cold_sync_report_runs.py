"""A resync of a running agent commits its workers' status reports in runs bounded by rows as
well as routers, each run's reports in one statement per table; what it applies, verifies and
reports is what it was: every router and binding ACTIVE in the database once settled, every
table as desired, tombstones removed (real store on both databases, the fake kernel)."""

from __future__ import annotations

import pytest
from agent_support import RefusingFake
from test_report_group_commit import Commits

import cthm.agent.agent as agent_module
from cthm.agent import Agent, LocalStoreSource
from cthm.domain import HelperCatalog, Router, Status, assignments_for, new_binding, new_router
from cthm.netfilter import NftablesBackend
from cthm.store import Store

ROUTERS = 12
PORTS = (21, 2121, 2122)


def add_routers(store: Store) -> list[Router]:
    catalog = HelperCatalog()
    with store.unit_of_work() as repo:
        for index in range(ROUTERS):
            router = repo.add_router(
                new_router(name=f"r{index}", project_id="p", namespace=f"qrouter-cs{index}")
            )
            for port in PORTS:
                repo.add_binding(
                    new_binding(catalog, router, protocol="tcp", port=port, helper="ftp")
                )
    with store.unit_of_work(write=False) as repo:  # the bindings moved their revisions
        return [repo.get_router(router_id) for router_id in repo.list_router_ids()]


def test_a_resync_applies_and_reports_every_router_in_runs_bounded_by_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 12 routers of 4 rows (the router and its 3 bindings): runs of at most two routers.
    monkeypatch.setattr(agent_module, "REPORT_ROWS", 8)
    kernel = RefusingFake()
    backend = NftablesBackend(kernel, owner="cs-test")
    agent = Agent(LocalStoreSource(store), backend, HelperCatalog(), resync_interval=3600)
    agent.start()  # no routers yet: the resync below is the cold sync
    try:
        assert agent.wait_settled(timeout=30)
        routers = add_routers(store)  # not announced to the agent: only a resync finds them
        for router in routers:
            kernel.add_namespace(router.namespace)
        with Commits() as commits:
            agent.resync()
            assert agent.wait_settled(timeout=30)
            # Settled means written: the statuses are in the database now.
            with store.unit_of_work(write=False) as repo:
                got = {
                    router.id: (
                        repo.get_router(router.id).status,
                        {b.status for b in repo.desired_bindings(router.id)[0]},
                    )
                    for router in routers
                }
        assert got == {r.id: (Status.ACTIVE, {Status.ACTIVE}) for r in routers}
        assert agent.counts["applied"] == ROUTERS
        assert agent.counts["failed"] == 0
        assert commits.count >= ROUTERS // 2  # runs cut at REPORT_ROWS rows
        catalog = HelperCatalog()
        with store.unit_of_work(write=False) as repo:
            for router in routers:
                bindings, _ = repo.desired_bindings(router.id)
                assert backend.read(router.namespace) == backend.desired(
                    assignments_for(catalog, bindings)
                )

        # A router deleted behind the agent's back: the next resync removes its table.
        gone = routers[0]
        with store.unit_of_work() as repo:
            repo.delete_router(gone.id)
        agent.resync()
        assert agent.wait_settled(timeout=30)
        assert backend.read(gone.namespace) is None
        with store.unit_of_work(write=False) as repo:
            assert gone.id not in repo.tombstones()
        assert backend.read(routers[1].namespace) is not None
    finally:
        assert agent.stop()
