"""Switching a node from one kernel backend to the other migrates its routers: the new
backend's rules appear, the old backend's go, and nothing else in the namespace changes."""

from __future__ import annotations

import pytest
from agent_support import World, nft

from cthm.agent import Action, Agent, KernelBackend, LocalStoreSource
from cthm.domain import Assignment, Protocol
from cthm.netfilter import IptablesBackend
from cthm.testing import run_in_namespace

pytestmark = pytest.mark.kernel

WANT = (Assignment(Protocol.TCP, 21, "ftp"), Assignment(Protocol.UDP, 69, "tftp"))


def raw_rules(namespace: str) -> str:
    return run_in_namespace(namespace, ["iptables-save", "-t", "raw"]).stdout


def filter_rules(namespace: str) -> list[str]:
    text = run_in_namespace(namespace, ["iptables-save", "-t", "filter"]).stdout
    return [line for line in text.splitlines() if line.startswith("-A")]


@pytest.mark.parametrize("start", ["iptables", "nftables"])
def test_switching_backend_migrates_the_router(world: World, start: str) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    world.bind(router, "udp", 69, "tftp")
    run_in_namespace(
        router.namespace,
        ["iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    )
    foreign = filter_rules(router.namespace)
    nftables = world.backend
    iptables = IptablesBackend()
    backends: dict[str, KernelBackend] = {"nftables": nftables, "iptables": iptables}
    target = "nftables" if start == "iptables" else "iptables"
    source = LocalStoreSource(world.store)
    try:
        before = Agent(source, backends[start], world.catalog)
        assert before.reconciler.reconcile(router.id).action is Action.APPLIED
        after = Agent(source, backends[target], world.catalog, retired_backends=(backends[start],))

        assert after.reconciler.reconcile(router.id).action is Action.APPLIED

        table = backends[target].read(router.namespace)
        assert table is not None
        assert table.assignments == WANT
        assert backends[start].read(router.namespace) is None, "the old backend's rules must go"
        assert filter_rules(router.namespace) == foreign
        if target == "nftables":
            assert "cthm-PREROUTING" not in raw_rules(router.namespace)
        else:
            assert "table inet cthm" not in nft(router.namespace, "list", "tables").splitlines()
        # Migration is checked once per run: the next reconcile writes nothing.
        assert after.reconciler.reconcile(router.id).action is Action.NOOP
    finally:
        iptables.close()


def test_a_node_without_the_retired_backends_rules_pays_one_read(world: World) -> None:
    router = world.router("r")
    world.bind(router, "tcp", 21, "ftp")
    iptables = IptablesBackend()
    try:
        agent = Agent(
            LocalStoreSource(world.store),
            world.backend,
            world.catalog,
            retired_backends=(iptables,),
        )
        assert agent.reconciler.reconcile(router.id).action is Action.APPLIED
        assert agent.reconciler.reconcile(router.id).action is Action.NOOP
        assert "cthm-PREROUTING" not in raw_rules(router.namespace)
    finally:
        iptables.close()
