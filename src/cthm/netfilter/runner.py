"""The seam between cthm and nft: run a transaction's text inside a network namespace."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, TypeVar

DEFAULT_TIMEOUT = 10.0

T = TypeVar("T")


class NftRunner(Protocol):
    """Runs nft text in the named namespace (`ip netns` name under /run/netns).

    `json=True` returns nft's JSON output (list commands); `dry_run=True` has the kernel check
    the transaction and changes nothing. Failures raise NftError subclasses; a missing namespace
    raises NamespaceNotFound before anything runs; an unsafe namespace name raises UnsafeValue.
    """

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str: ...

    def close(self) -> None: ...


class Generation(NamedTuple):
    """A namespace's nftables ruleset generation, as one context of a runner read it (see
    netfilter/libnftables.py): equal generations mean no commit happened in between."""

    context: int  # the serial of the runner's context: one namespace instance
    id: int  # the kernel's generation id (moves on every commit in the namespace)


class TrackedRunner(Protocol):
    """A runner that also reads the namespace's generation around a command: (before, after,
    output), output None (nothing run) when `unless` is the generation before; a generation is
    None when it cannot be read (LibNftablesRunner.run_tracked)."""

    def run_tracked(
        self,
        namespace: str,
        commands: str,
        *,
        json: bool = False,
        unless: Generation | None = None,
    ) -> tuple[Generation | None, Generation | None, str | None]: ...


class SetReader(Protocol):
    """A runner that can also read one of cthm's port sets without nft (LibNftablesRunner
    .read_port_set): the set's ports, sorted, or None when it cannot say (nft's listing then
    decides)."""

    def read_port_set(self, namespace: str, table: str, name: str) -> tuple[int, ...] | None: ...

    def run_and_read_sets(
        self, namespace: str, commands: str, table: str, names: Sequence[str]
    ) -> list[tuple[int, ...] | None]:
        """run(), then read_port_set() of each name, in one call."""
        ...


class TableProbe(Protocol):
    """A runner that can also tell whether a table exists without nft (LibNftablesRunner
    .table_exists): True, False, or None when it cannot say."""

    def table_exists(self, namespace: str, table: str) -> bool | None: ...


class Batcher(Protocol):
    """A runner that can run a job whose own calls to it cost no hand-off each
    (LibNftablesRunner.batch): job() itself is run, its exceptions raised as they are; with
    `namespace`, the job's calls on that namespace share one entry into it."""

    def batch(self, job: Callable[[], T], namespace: str | None = None) -> T: ...


class GenerationReader(Protocol):
    """A runner that reads a namespace's generation from the calling thread
    (LibNftablesRunner.generation): None when it cannot."""

    def generation(self, namespace: str) -> Generation | None: ...
