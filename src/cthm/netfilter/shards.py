"""Several libnftables worker threads: each namespace always on the same one (by its name).

One LibNftablesRunner serialises all kernel work on its thread, and a full sync spends most of
that thread's time in libnftables and the kernel, without the GIL (issue 14). With two, the
nft work of two routers runs at once on two cores while the agent's threads do the Python.
A namespace's calls all go to one shard, so everything a runner promises per namespace
(its cached context, generations told apart by the context serial, one call at a time) holds
as it does for a single runner.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from cthm.netfilter.libnftables import ContextKey, LibNftablesRunner
from cthm.netfilter.runner import Generation

T = TypeVar("T")


class ShardedRunner:
    """LibNftablesRunner's interface over `shards` runners; closes them when closed."""

    def __init__(self, shards: Sequence[LibNftablesRunner]) -> None:
        if not shards:
            raise ValueError("a sharded runner needs at least one runner")
        self.shards = tuple(shards)

    def _of(self, namespace: str) -> LibNftablesRunner:
        # crc32, not hash(): the same shard for a name in every process run (reproducible).
        return self.shards[zlib.crc32(namespace.encode()) % len(self.shards)]

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        return self._of(namespace).run(namespace, commands, json=json, dry_run=dry_run)

    def run_tracked(
        self,
        namespace: str,
        commands: str,
        *,
        json: bool = False,
        unless: Generation | None = None,
    ) -> tuple[Generation | None, Generation | None, str | None]:
        return self._of(namespace).run_tracked(namespace, commands, json=json, unless=unless)

    def read_port_set(self, namespace: str, table: str, name: str) -> tuple[int, ...] | None:
        return self._of(namespace).read_port_set(namespace, table, name)

    def run_and_read_sets(
        self, namespace: str, commands: str, table: str, names: Sequence[str]
    ) -> list[tuple[int, ...] | None]:
        return self._of(namespace).run_and_read_sets(namespace, commands, table, names)

    def table_exists(self, namespace: str, table: str) -> bool | None:
        return self._of(namespace).table_exists(namespace, table)

    def batch(self, job: Callable[[], T], namespace: str | None = None) -> T:
        """On the namespace's shard; without one, job() runs here and each of its calls goes
        to its own shard (a job on one shard's thread waiting for another's could deadlock)."""
        if namespace is None:
            return job()
        return self._of(namespace).batch(job, namespace)

    def generation(self, namespace: str) -> Generation | None:
        return self._of(namespace).generation(namespace)

    def cached_contexts(self) -> list[ContextKey]:
        return [key for shard in self.shards for key in shard.cached_contexts()]

    def prune(self) -> list[ContextKey]:
        return [key for shard in self.shards for key in shard.prune()]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()
