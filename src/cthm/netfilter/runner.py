"""The seam between cthm and nft: run a transaction's text inside a network namespace."""

from __future__ import annotations

from typing import NamedTuple, Protocol

DEFAULT_TIMEOUT = 10.0


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
