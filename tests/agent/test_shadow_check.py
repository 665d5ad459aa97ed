"""The agent's check for bindings other rules' `-j CT` shadow, over the fake kernel and a raw
table given as iptables-save text: read at the periodic resync (and the first time a router has
bindings), never on each change; the binding stays ACTIVE with the reason, written once, and
loses it at the first resync after the rule is gone. (tests/faults/test_shadowed_bindings.py
does the same with a real server, kernel and iptables.)"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import HelperCatalog, ListQuery, Status, new_binding, new_router
from cthm.netfilter import FakeNftables, NftablesBackend, RawTable
from cthm.store import Store

NAMESPACE = "qrouter-shadow"
RULE = "-A PREROUTING -p tcp -m tcp --dport 6667 -j CT --helper irc"
REASON = f"shadowed by rule `{RULE}` in raw PREROUTING: connections get helper irc, not ftp"


class RawTables:
    """The namespace's raw table as text the test sets; counts the reads."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self.reads = 0

    def __call__(self, namespace: str) -> Sequence[RawTable]:
        assert namespace == NAMESPACE
        self.reads += 1
        text = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        text += "".join(f"{rule}\n" for rule in self.rules) + "COMMIT\n"
        return (RawTable.parse("IPv4", "nft", text),)


class World:
    def __init__(self, store: Store) -> None:
        kernel = FakeNftables()
        kernel.add_namespace(NAMESPACE)
        self.store = store
        self.catalog = HelperCatalog()
        self.raw = RawTables()
        self.agent = Agent(
            LocalStoreSource(store), NftablesBackend(kernel), self.catalog, raw_tables=self.raw
        )
        with store.unit_of_work() as repo:
            self.router = repo.add_router(new_router(name="r", project_id="p", namespace=NAMESPACE))

    def bind(self, port: int) -> str:
        with self.store.unit_of_work() as repo:
            binding = new_binding(
                self.catalog, self.router, protocol="tcp", port=port, helper="ftp"
            )
            return repo.add_binding(binding).id

    def bindings(self) -> dict[int, tuple[Status, str, int]]:
        with self.store.unit_of_work(write=False) as repo:
            rows = repo.list_bindings(ListQuery(), self.router.id)
        return {b.port: (b.status, b.status_reason, b.revision_number) for b in rows}

    def change(self) -> None:
        """What an API change does: reconcile this router once."""
        self.agent.reconciler.reconcile(self.router.id)

    def resync(self) -> None:
        """What the periodic resync does (run here, in this thread)."""
        self.agent.resync()
        self.agent.sync_all()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    try:
        yield World(store)
    finally:
        store.close()


def test_read_at_resync_not_on_each_change_and_the_reason_comes_and_goes(world: World) -> None:
    world.change()
    assert world.raw.reads == 0  # no bindings: nothing can be shadowed
    world.bind(6667)
    world.change()
    assert world.raw.reads == 1  # the router's first bindings: read once
    assert world.bindings()[6667][:2] == (Status.ACTIVE, "")

    world.raw.rules = [RULE]  # Neutron's rule appears behind cthm's back
    world.bind(21)
    world.change()
    assert world.raw.reads == 1  # a change does not read the raw tables again
    assert world.bindings()[6667][:2] == (Status.ACTIVE, "")

    world.resync()
    assert world.raw.reads == 2
    found = world.bindings()
    assert found[6667][:2] == (Status.ACTIVE, REASON)
    assert found[21][:2] == (Status.ACTIVE, "")
    state = world.agent.kernel_state(world.router.id)
    assert state is not None
    assert state.in_sync is True
    (shadow,) = state.shadowed
    assert (shadow.port, shadow.rule, shadow.foreign_helper, shadow.reason) == (
        6667,
        RULE,
        "irc",
        REASON,
    )

    world.resync()
    world.change()
    assert world.bindings() == found  # the same finding again writes nothing

    world.raw.rules = []
    world.resync()
    assert world.bindings()[6667][:2] == (Status.ACTIVE, "")
    state = world.agent.kernel_state(world.router.id)
    assert state is not None
    assert state.shadowed == ()
