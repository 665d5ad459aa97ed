"""Choosing a runner: in-process libnftables when the library loads, else the nft binary."""

from __future__ import annotations

from cthm.netfilter.libnftables import LIBRARY, LibNftablesRunner, LibraryUnavailable
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NftRunner
from cthm.netfilter.subprocess_runner import SubprocessRunner

RUNNER_KINDS = ("auto", "libnftables", "subprocess")


def make_runner(
    kind: str = "auto", *, timeout: float = DEFAULT_TIMEOUT, library: str = LIBRARY
) -> NftRunner:
    """A runner of `kind`: "libnftables" (in-process), "subprocess" (the nft binary), or
    "auto" (libnftables if the library loads, else subprocess). `timeout` bounds each nft
    process of the subprocess runner."""
    if kind == "subprocess":
        return SubprocessRunner(timeout=timeout)
    if kind == "libnftables":
        return LibNftablesRunner(library=library)
    if kind == "auto":
        try:
            return LibNftablesRunner(library=library)
        except LibraryUnavailable:
            return SubprocessRunner(timeout=timeout)
    raise ValueError(f"unknown runner kind {kind!r}; one of {', '.join(RUNNER_KINDS)}")
