"""Several libnftables threads (netfilter/shards.py, the agent's runner), against the real
kernel: every namespace's work is always on the same thread, so its context, its generations
and its tables are what a single runner gives; full syncs of many namespaces land each in its
own; a job with a namespace runs on that namespace's thread, one without on the caller's."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    AGENT_THREADS,
    LibNftablesRunner,
    NftablesBackend,
    ShardedRunner,
    make_runner,
)
from cthm.testing import NamespaceFactory

from .conftest import nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000f"


@pytest.fixture
def sharded() -> Iterator[ShardedRunner]:
    runner = make_runner("libnftables", threads=2)
    assert isinstance(runner, ShardedRunner)
    yield runner
    runner.close()


def shard_of(runner: ShardedRunner, namespace: str) -> list[int]:
    """The indexes of the shards holding a context of the namespace."""
    return [
        index
        for index, shard in enumerate(runner.shards)
        if any(key[0] == namespace for key in shard.cached_contexts())
    ]


def test_the_agents_runner_has_its_threads() -> None:
    runner = make_runner("libnftables", threads=AGENT_THREADS)
    try:
        assert AGENT_THREADS >= 2
        assert isinstance(runner, ShardedRunner)
        assert len(runner.shards) == AGENT_THREADS
        assert all(isinstance(shard, LibNftablesRunner) for shard in runner.shards)
    finally:
        runner.close()
    single = make_runner("libnftables")
    try:
        assert isinstance(single, LibNftablesRunner)  # one-shot tools: one thread
    finally:
        single.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.shards[0].run("any", "list tables")


def test_full_syncs_of_many_namespaces_each_land_in_their_own_on_one_thread(
    sharded: ShardedRunner, netns: NamespaceFactory
) -> None:
    backend = NftablesBackend(sharded, owner=OWNER)
    synced: dict[str, list[Assignment]] = {}
    for index in range(16):  # until both threads hold namespaces (each name: 1 in 2)
        namespace = netns.create(f"sh{index}")
        assignments = [Assignment(TCP, 2000 + index, "ftp"), Assignment(UDP, 69, "tftp")]
        want = backend.desired(assignments)
        assert backend.sync(namespace, assignments, want) == (None, want)
        synced[namespace] = assignments
        if len(synced) >= 4 and {i for n in synced for i in shard_of(sharded, n)} == {0, 1}:
            break
    assert {i for n in synced for i in shard_of(sharded, n)} == {0, 1}
    for namespace, assignments in synced.items():
        assert len(shard_of(sharded, namespace)) == 1  # never a context on both threads
        assert backend.sync(namespace, assignments, backend.desired(assignments))[1] is None
        port = assignments[0].port
        assert f"{port}" in nft(namespace, "list", "set", "inet", "cthm", "ingress-ftp-tcp")
        # Its generation is its one thread's, as run_tracked reads it.
        _, after, _ = sharded.run_tracked(namespace, "list tables")
        assert after is not None
        assert sharded.generation(namespace) == after


def test_a_job_runs_on_its_namespaces_thread_or_else_on_the_callers(
    sharded: ShardedRunner, netns: NamespaceFactory
) -> None:
    first, second = netns.create("ja"), netns.create("jb")
    sharded.run(first, "add table inet cthm\n")
    sharded.run(second, "add table inet cthm\n")
    (index,) = shard_of(sharded, first)
    assert sharded.batch(threading.get_native_id, first) == sharded.shards[index].worker_native_id

    def both() -> tuple[int, bool | None, bool | None]:
        return (
            threading.get_native_id(),
            sharded.table_exists(first, "cthm"),
            sharded.table_exists(second, "cthm"),
        )

    assert sharded.batch(both) == (threading.get_native_id(), True, True)
