"""The nftables backend the agent uses: read, apply, delete cthm's table in a router namespace,
and ask the kernel which helpers it has. Every write is one atomic transaction."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from cthm.domain import Assignment, Protocol
from cthm.netfilter.errors import NftNotFound
from cthm.netfilter.model import (
    TABLE_FAMILY,
    TABLE_NAME,
    KernelTable,
    check_owner,
    owner_from_comment,
)
from cthm.netfilter.parse import parse_table, table_comment
from cthm.netfilter.render import desired_table, render, render_delete, render_probe
from cthm.netfilter.runner import NftRunner

LIST_COMMAND = f"list table {TABLE_FAMILY} {TABLE_NAME}"


class NftablesBackend:
    label = "nftables"  # for logs: which backend did what

    def __init__(self, runner: NftRunner, *, owner: str | None = None) -> None:
        """owner: the deployment id every table this backend writes is marked with (its
        comment `cthm:<owner>`); None writes unmarked tables (tests, tools that only read)."""
        self.runner = runner
        self.owner = check_owner(owner) if owner is not None else None
        # The last listing parsed per namespace. parse_table is a pure function of the listing
        # text, and an unchanged table lists byte-for-byte the same (handles included), so an
        # equal text gets the same (immutable) result without parsing a thousand map elements
        # again: every no-op resync and every read before a change hits it.
        self._parsed: dict[str, tuple[str, KernelTable | None]] = {}
        self._parsed_lock = threading.Lock()

    def read(self, namespace: str) -> KernelTable | None:
        """cthm's table in the namespace; None when there is none."""
        try:
            text = self.runner.run(namespace, LIST_COMMAND, json=True)
        except NftNotFound:
            self._forget(namespace)
            return None
        with self._parsed_lock:
            last = self._parsed.get(namespace)
        if last is not None and last[0] == text:
            return last[1]
        table = parse_table(text)
        if table is not None and table.owner is None:
            # nft 1.0.6 leaves the table's comment out of JSON: one text listing. Never changed
            # in place (nft cannot alter a table's comment, and a new table has a new handle,
            # so a new JSON text), the owner is cached with the listing like the rest.
            try:
                comment = table_comment(self.runner.run(namespace, LIST_COMMAND))
            except NftNotFound:
                self._forget(namespace)  # deleted between the two listings
                return None
            table = replace(table, owner=owner_from_comment(comment))
        with self._parsed_lock:
            self._parsed[namespace] = (text, table)
        return table

    def _forget(self, namespace: str) -> None:
        with self._parsed_lock:
            self._parsed.pop(namespace, None)

    def desired(self, assignments: Sequence[Assignment]) -> KernelTable:
        """What `read()` returns after `apply(assignments)`: `desired_table(assignments, owner)`."""
        return desired_table(assignments, self.owner)

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None:
        """Replaces cthm's table with exactly `assignments`, in one transaction; afterwards
        `read(namespace) == self.desired(assignments)`, marked with this backend's owner.
        Nothing else in the namespace changes."""
        text = str(render(assignments, self.owner))  # raises UnsafeValue before anything runs
        self.runner.run(namespace, text)

    def delete(self, namespace: str) -> bool:
        """Deletes cthm's table; True if there was one."""
        self._forget(namespace)  # bounded by the namespaces that hold a table of ours
        try:
            self.runner.run(namespace, str(render_delete()))
        except NftNotFound:
            return False
        return True

    def available_helpers(
        self, namespace: str, kinds: Iterable[tuple[str, Protocol]]
    ) -> dict[tuple[str, Protocol], bool]:
        """Whether this kernel has each (helper type, protocol), by dry runs: changes nothing.

        One dry run for all kinds; only if the kernel refuses it, one per kind to find which.
        """
        wanted = sorted(set(kinds))
        if not wanted:
            return {}
        if self._probe(namespace, wanted):
            return dict.fromkeys(wanted, True)
        return {kind: self._probe(namespace, [kind]) for kind in wanted}

    def _probe(self, namespace: str, kinds: list[tuple[str, Protocol]]) -> bool:
        text = str(render_probe(kinds))
        try:
            self.runner.run(namespace, text, dry_run=True)
        except NftNotFound:
            return False
        return True

    def close(self) -> None:
        self.runner.close()
