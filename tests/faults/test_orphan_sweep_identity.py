"""Two cthm deployments on one host (two data directories, two databases, two real `cthm serve`
processes, the orphan sweep on): the start-up sweep removes only kernel state that carries its
own deployment's identity and belongs to no router of it. Another deployment's table survives,
unmarked state (from a cthm before identities) is reported and left alone, and an unmarked
table of a router the deployment owns is marked at its next apply. Both backends.

Real kernel, namespaces this test creates. The servers' sweeps look at every namespace on the
host: that is the point (a shared host); they can only delete what their fresh databases' own
identities mark, which is only this test's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from cthm.agent import KernelBackend
from cthm.domain import Assignment, Protocol
from cthm.netfilter import IptablesBackend, KernelTable, NftablesBackend, SubprocessRunner
from cthm.store import Store, deployment_id
from cthm.testing import NamespaceFactory, run_in_namespace
from cthm.testing.service import ServerProcess
from support.faults import Api, wait_until

pytestmark = pytest.mark.kernel

FTP = [Assignment(Protocol.TCP, 21, "ftp")]
SWEEP_ON = {"CTHM_SWEEP_ORPHANS": "true"}  # the default, said explicitly


@dataclass
class Kernel:
    """The test's own view of one backend: reads whose state it is, writes unmarked state (as a
    cthm before deployment identities wrote it)."""

    name: str
    serve_args: tuple[str, ...]
    backend: KernelBackend

    def read(self, namespace: str) -> KernelTable | None:
        table = self.backend.read(namespace)
        assert table is None or isinstance(table, KernelTable)
        return table

    def owner(self, namespace: str) -> str | None:
        table = self.read(namespace)
        return table.owner if table is not None else None


@pytest.fixture(params=["nftables", "iptables"])
def kernel(request: pytest.FixtureRequest) -> Iterator[Kernel]:
    if request.param == "nftables":
        backend: KernelBackend = NftablesBackend(SubprocessRunner())
        args: tuple[str, ...] = ("--backend", "nftables")
    else:
        backend = IptablesBackend("subprocess", flavour="nft")
        args = ("--backend", "iptables", "--iptables-flavour", "nft")
    yield Kernel(str(request.param), args, backend)
    backend.close()


def _assignments(kernel: Kernel, namespace: str) -> list[Assignment] | None:
    table = kernel.read(namespace)
    return list(table.assignments) if table is not None else None


def ruleset(namespace: str) -> str:
    """Everything in the namespace, with handles: a table deleted and made again differs."""
    return run_in_namespace(namespace, ["nft", "-a", "list", "ruleset"]).stdout


def identity(server: ServerProcess) -> str:
    store = Store(f"sqlite:///{server.data_dir / 'cthm.db'}")
    try:
        return deployment_id(store)
    finally:
        store.close()


def agent_configurations(server: ServerProcess) -> dict[str, object]:
    response = httpx.get(f"{server.url}/v2.0/agents", headers=server.auth_headers(), timeout=5)
    assert response.status_code == 200, response.text
    (agent,) = response.json()["agents"]
    configurations: dict[str, object] = agent["configurations"]
    return configurations


def test_the_sweep_removes_only_its_own_deployments_orphans(
    kernel: Kernel, netns: NamespaceFactory, tmp_path: Path
) -> None:
    theirs_ns = netns.create("theirs")  # deployment B's router
    live_ns = netns.create("live")  # A's router, untouched throughout
    orphan_ns = netns.create("orphan")  # A's router, deleted from A's database while A is down
    old_ns = netns.create("old")  # A's router whose table an older cthm wrote (unmarked)
    stray_ns = netns.create("stray")  # unmarked state no router of A claims

    b = ServerProcess(tmp_path / "b", tmp_path / "logs-b", args=kernel.serve_args, env=SWEEP_ON)
    a = ServerProcess(tmp_path / "a", tmp_path / "logs-a", args=kernel.serve_args, env=SWEEP_ON)
    with b, a, Api(b) as api_b, Api(a) as api_a:
        routers_b = {api_b.create_router(theirs_ns): theirs_ns}
        routers_a = {api_a.create_router(ns): ns for ns in (live_ns, orphan_ns, old_ns)}
        for api, routers in ((api_b, routers_b), (api_a, routers_a)):
            for router_id in routers:
                assert api.create_binding(router_id, "tcp", 21, "ftp").status_code == 201
        id_a, id_b = identity(a), identity(b)
        assert id_a != id_b
        marked = {theirs_ns: id_b, **dict.fromkeys(routers_a.values(), id_a)}
        assert wait_until(
            lambda: all(
                kernel.owner(ns) == owner and _assignments(kernel, ns) == FTP
                for ns, owner in marked.items()
            ),
            15,
        ), {ns: kernel.read(ns) for ns in marked}

        a.stop()
        # While A is down: its router on orphan_ns leaves its database without a tombstone (a
        # restored backup, an edit by hand), an older cthm rewrites old_ns unmarked, and
        # unmarked state appears in stray_ns.
        orphan_id = next(r for r, ns in routers_a.items() if ns == orphan_ns)
        store = Store(f"sqlite:///{a.data_dir / 'cthm.db'}")
        try:
            with store.unit_of_work() as repo:
                repo.delete_router(orphan_id)
                repo.clear_tombstone(orphan_id)
        finally:
            store.close()
        for ns in (old_ns, stray_ns):
            kernel.backend.apply(ns, FTP)  # the test's backend marks nothing
            assert kernel.read(ns) is not None
            assert kernel.owner(ns) is None
        theirs_before = ruleset(theirs_ns)
        live_before = ruleset(live_ns)

        a.start()  # its agent sweeps before the server answers /healthz

        assert ruleset(theirs_ns) == theirs_before, "deployment B's table must survive A's sweep"
        assert kernel.owner(theirs_ns) == id_b
        assert kernel.read(orphan_ns) is None, "A's own orphan must be removed"
        assert kernel.read(stray_ns) is not None, "unmarked state is reported, never deleted"
        assert kernel.owner(stray_ns) is None
        assert ruleset(live_ns) == live_before, "a live router's table is not rewritten"
        # A's router's unmarked table differs from what A renders: its apply marks it.
        assert wait_until(lambda: kernel.owner(old_ns) == id_a, 15), kernel.read(old_ns)
        assert kernel.read(old_ns) == kernel.read(live_ns)

        logs = a.stderr
        for ns, whose in ((stray_ns, "no deployment (unmarked"), (theirs_ns, id_b)):
            lines = [line for line in logs.splitlines() if f"namespace {ns} holds" in line]
            assert len(lines) == 1, (ns, logs)  # reported once
            assert "WARNING" in lines[0]
            assert whose in lines[0]
            assert "left in place" in lines[0]
        configurations = agent_configurations(a)
        assert configurations["deployment_id"] == id_a
        unclaimed = configurations["unclaimed_kernel_state"]
        assert isinstance(unclaimed, dict)
        assert unclaimed[stray_ns] == "unmarked"
        assert unclaimed[theirs_ns] == id_b
        assert orphan_ns not in unclaimed
        assert old_ns not in unclaimed

        # B never noticed: its router is still ACTIVE on its own table.
        (router_b,) = routers_b
        assert api_b.router(router_b)["status"] == "ACTIVE"
        live = kernel.read(live_ns)
        assert live is not None
        assert kernel.read(theirs_ns) == replace(live, owner=id_b)
