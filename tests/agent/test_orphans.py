"""Orphaned tables at agent start: `table inet cthm` marked with this deployment's identity in a
namespace no router claims is removed, and nothing else is touched (tests/faults/
test_orphan_sweep_identity.py: other deployments' and unmarked tables, both backends). Real
kernel, namespaces this test creates.

The agents here are narrowed (orphan_scope) to this test's namespaces: the sweep itself looks at
every namespace under /run/netns, and other cthm work on this host must not feel these tests.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from agent_support import FOREIGN_RULESET, World, nft

from cthm.agent import Agent, LocalStoreSource

pytestmark = pytest.mark.kernel

ORPHAN_TABLE = """
table inet cthm {
    comment "cthm:OWNER"
    ct helper ftp-tcp { type "ftp" protocol tcp; l3proto inet; }
    chain prerouting {
        type filter hook prerouting priority filter; policy accept;
        ct helper set tcp dport map { 21 : "ftp-tcp" }
    }
}
"""


def orphan_table(world: World) -> str:
    """An orphan of this deployment: its identity, and no router of it."""
    assert world.backend.owner is not None
    return ORPHAN_TABLE.replace("OWNER", world.backend.owner)


def without_ours(namespace: str) -> str:
    """The namespace's ruleset with handles, cthm's table cut out: byte-for-byte the rest."""
    text = nft(namespace, "-a", "list", "ruleset")
    return re.sub(r"table inet cthm \{.*?\n\}\n?", "", text, flags=re.S)


def table_handle(namespace: str) -> str | None:
    """Our table's kernel handle (it changes whenever the table is made again); None: none."""
    text = nft(namespace, "-a", "list", "ruleset")
    match = re.search(r"^table inet cthm \{ # handle (\d+)$", text, flags=re.M)
    return match.group(1) if match else None


def scoped_agent(world: World) -> Agent:
    prefix = world.netns.prefix
    return Agent(
        LocalStoreSource(world.store),
        world.backend,
        world.catalog,
        resync_interval=3600,
        orphan_scope=lambda name: name.startswith(prefix),
    )


def test_orphan_removed_foreign_intact_live_router_untouched(world: World) -> None:
    live = world.router("live")
    world.bind(live, "tcp", 21, "ftp")
    world.agent.sync_all()
    live_handle = table_handle(live.namespace)
    live_ruleset = nft(live.namespace, "-a", "list", "ruleset")

    orphan = world.netns.create("orphan")
    nft(orphan, "-f", "-", stdin=FOREIGN_RULESET)
    nft(orphan, "-f", "-", stdin=orphan_table(world))
    foreign = without_ours(orphan)
    assert "table inet filter" in foreign
    assert table_handle(orphan) is not None
    bystander = world.netns.create("bystander")
    nft(bystander, "-f", "-", stdin=FOREIGN_RULESET)
    bystander_before = nft(bystander, "-a", "list", "ruleset")

    agent = scoped_agent(world)
    agent.start()
    try:
        assert agent.wait_settled(10)
        assert table_handle(orphan) is None, "the orphaned table must be gone"
        assert nft(orphan, "-a", "list", "ruleset") == foreign
        assert nft(bystander, "-a", "list", "ruleset") == bystander_before
        # The live router's table was neither deleted nor rewritten.
        assert table_handle(live.namespace) == live_handle
        assert nft(live.namespace, "-a", "list", "ruleset") == live_ruleset
    finally:
        assert agent.stop(timeout=10)


def test_the_sweep_runs_only_at_start(world: World) -> None:
    agent = scoped_agent(world)
    agent.start()
    try:
        assert agent.wait_settled(10)
        late = world.netns.create("late")
        nft(late, "-f", "-", stdin=orphan_table(world))
        handle = table_handle(late)

        agent.resync()
        assert agent.wait_settled(10)

        assert table_handle(late) == handle, "a resync must never remove tables"
    finally:
        assert agent.stop(timeout=10)


def test_a_tombstone_is_handled_by_reconcile_and_cleared(world: World) -> None:
    router = world.router("dead")
    world.bind(router, "tcp", 21, "ftp")
    world.agent.sync_all()
    nft(router.namespace, "-f", "-", stdin=FOREIGN_RULESET)
    foreign = without_ours(router.namespace)
    with world.store.unit_of_work() as repo:
        repo.delete_router(router.id)  # while no agent runs: the tombstone waits

    agent = scoped_agent(world)
    agent.start()
    try:
        assert agent.wait_settled(10)
        assert table_handle(router.namespace) is None
        assert nft(router.namespace, "-a", "list", "ruleset") == foreign
        with world.store.unit_of_work(write=False) as repo:
            assert repo.tombstones() == {}
        assert agent.counts["removed"] == 1, "the tombstone path removed it, not the sweep"
    finally:
        assert agent.stop(timeout=10)


def test_no_sweep_when_a_stored_router_cannot_be_read(world: World) -> None:
    """A router row edited behind the API's back has an unknown namespace: its table might be
    taken for an orphan, so nothing is removed at all."""
    tampered = world.router("tampered")
    orphan = world.netns.create("orphan")
    nft(orphan, "-f", "-", stdin=orphan_table(world))
    handle = table_handle(orphan)
    path = world.store.url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE routers SET namespace = ? WHERE id = ?", ("bad name!", tampered.id))

    agent = scoped_agent(world)
    assert agent.remove_orphans() == []
    assert table_handle(orphan) == handle


def test_a_tombstone_never_removes_another_deployments_table(world: World) -> None:
    """A router deleted while the agent was down, its namespace since taken over by another
    deployment on the host: that deployment's table stays; the tombstone is done with."""
    router = world.router("taken")
    with world.store.unit_of_work() as repo:
        repo.delete_router(router.id)
    theirs = ORPHAN_TABLE.replace("OWNER", "another-deployment")
    nft(router.namespace, "-f", "-", stdin=theirs)
    handle = table_handle(router.namespace)

    agent = scoped_agent(world)
    agent.start()
    try:
        assert agent.wait_settled(10)
        assert table_handle(router.namespace) == handle
        with world.store.unit_of_work(write=False) as repo:
            assert repo.tombstones() == {}
    finally:
        assert agent.stop(timeout=10)
