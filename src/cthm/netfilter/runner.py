"""The seam between cthm and nft: run a transaction's text inside a network namespace."""

from __future__ import annotations

from typing import Protocol

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
