"""Choosing a runner: in-process libnftables when the library loads, else the nft binary."""

from __future__ import annotations

import shutil

from cthm.netfilter.libnftables import (
    LIBRARY,
    MAX_CONTEXTS,
    LibNftablesRunner,
    LibraryUnavailable,
)
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NftRunner
from cthm.netfilter.shards import ShardedRunner
from cthm.netfilter.subprocess_runner import SubprocessRunner

RUNNER_KINDS = ("auto", "libnftables", "subprocess")
# libnftables threads of an agent's runner (netfilter/shards.py): a full sync's nft work runs
# on two cores (cold 100 x 10: ~15% less wall time, measured); one-shot tools use one.
AGENT_THREADS = 2


def _libnftables(library: str, threads: int) -> NftRunner:
    if threads <= 1:
        return LibNftablesRunner(library=library)
    shards: list[LibNftablesRunner] = []
    try:
        for _ in range(threads):
            # The cap on cached contexts (their memory) is the runner's, whatever its threads.
            shards.append(LibNftablesRunner(library=library, max_contexts=MAX_CONTEXTS // threads))
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    return ShardedRunner(shards)


class NftablesUnavailable(OSError):
    """Neither libnftables nor the nft binary can be used (or not the kind asked for)."""


def make_runner(
    kind: str = "auto",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    library: str = LIBRARY,
    threads: int = 1,
) -> NftRunner:
    """A runner of `kind`: "libnftables" (in-process), "subprocess" (the nft binary), or
    "auto" (libnftables if the library loads, else subprocess). `timeout` bounds each nft
    process of the subprocess runner; `threads`: libnftables worker threads, each namespace
    always on the same one (an agent's: AGENT_THREADS)."""
    if kind == "subprocess":
        return SubprocessRunner(timeout=timeout)
    if kind == "libnftables":
        return _libnftables(library, threads)
    if kind == "auto":
        try:
            return _libnftables(library, threads)
        except LibraryUnavailable:
            return SubprocessRunner(timeout=timeout)
    raise ValueError(f"unknown runner kind {kind!r}; one of {', '.join(RUNNER_KINDS)}")


def make_usable_runner(
    kind: str = "auto",
    *,
    timeout: float = DEFAULT_TIMEOUT,
    library: str = LIBRARY,
    threads: int = 1,
) -> NftRunner:
    """`make_runner(kind)`, refusing a runner that could not run anything: LibraryUnavailable
    if "libnftables" does not load, NftablesUnavailable if the subprocess runner it would
    return finds no `nft` on PATH (so "auto" fails only when neither can be used)."""
    runner = make_runner(kind, timeout=timeout, library=library, threads=threads)
    if isinstance(runner, SubprocessRunner) and shutil.which("nft") is None:
        detail = "" if kind == "subprocess" else f"{library} cannot be loaded and "
        raise NftablesUnavailable(f"{detail}nft is not on PATH")
    return runner
