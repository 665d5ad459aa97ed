"""Choosing a runner: in-process libnftables when the library loads, else the nft binary."""

from __future__ import annotations

import shutil

from cthm.netfilter.libnftables import LIBRARY, LibNftablesRunner, LibraryUnavailable
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NftRunner
from cthm.netfilter.subprocess_runner import SubprocessRunner

RUNNER_KINDS = ("auto", "libnftables", "subprocess")


class NftablesUnavailable(OSError):
    """Neither libnftables nor the nft binary can be used (or not the kind asked for)."""


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


def make_usable_runner(
    kind: str = "auto", *, timeout: float = DEFAULT_TIMEOUT, library: str = LIBRARY
) -> NftRunner:
    """`make_runner(kind)`, refusing a runner that could not run anything: LibraryUnavailable
    if "libnftables" does not load, NftablesUnavailable if the subprocess runner it would
    return finds no `nft` on PATH (so "auto" fails only when neither can be used)."""
    runner = make_runner(kind, timeout=timeout, library=library)
    if isinstance(runner, SubprocessRunner) and shutil.which("nft") is None:
        detail = "" if kind == "subprocess" else f"{library} cannot be loaded and "
        raise NftablesUnavailable(f"{detail}nft is not on PATH")
    return runner
