"""The nftables backend the agent uses: read, apply (full sync), update (partial sync), delete
cthm's table in a router namespace, and ask the kernel which helpers it has. Every write is one
atomic transaction."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import replace

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import NftNotFound, UnsafeValue
from cthm.netfilter.model import (
    TABLE_FAMILY,
    TABLE_NAME,
    KernelTable,
    check_owner,
    helper_object_name,
    owner_from_comment,
    set_name,
)
from cthm.netfilter.parse import parse_set, parse_table, table_comment
from cthm.netfilter.render import desired_table, render, render_delete, render_probe
from cthm.netfilter.runner import NftRunner
from cthm.netfilter.transaction import Transaction

LIST_COMMAND = f"list table {TABLE_FAMILY} {TABLE_NAME}"
LIST_SET_COMMAND = f"list set {TABLE_FAMILY} {TABLE_NAME} {{name}}"

# A port set of the layout, by what it holds: (direction, helper type, protocol).
SetKey = tuple[Direction, str, Protocol]


def _sort_key(a: Assignment) -> tuple[Protocol, int, Direction]:
    """The order of KernelTable.assignments (render's and parse's)."""
    return (a.protocol, a.port, a.direction)


def _set_order(key: SetKey) -> tuple[str, str]:
    name = set_name(key[0], helper_object_name(key[1], key[2]))
    return (name.casefold(), name)


def _port_sets(assignments: Iterable[Assignment]) -> dict[SetKey, set[int]]:
    """Assignments grouped into the layout's sets. Refuses, as render does, two helpers on one
    (protocol, port) in one direction; the values themselves are checked where they reach nft
    text (a set that would appear makes update() decline, and apply() checks everything)."""
    sets: dict[SetKey, set[int]] = {}
    try:
        for a in assignments:  # the hot loop of a partial sync: one dict and one set operation
            key = (a.direction, a.helper, a.protocol)
            ports = sets.get(key)
            if ports is None:
                ports = sets[key] = set()
            ports.add(a.port)
        # Two helpers on one port of a direction and protocol: two of its sets share the port.
        keys = sorted(sets, key=lambda k: (k[0], k[2], k[1]))
    except (AttributeError, TypeError) as exc:  # not Assignments, or values of odd types
        raise UnsafeValue(f"assignments cthm cannot render: {exc}") from exc
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if (first[0], first[2]) != (second[0], second[2]):
                break
            common = sets[first] & sets[second]
            if common:
                direction, helper, protocol = first
                raise UnsafeValue(
                    f"{direction} {protocol} port {min(common)} assigned both {helper} and "
                    f"{second[1]}"
                )
    return sets


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
        # The last table update() returned per namespace, with its assignments by set.
        self._sets: dict[str, tuple[KernelTable, dict[SetKey, set[int]]]] = {}
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
            self._sets.pop(namespace, None)

    def desired(self, assignments: Sequence[Assignment]) -> KernelTable:
        """What `read()` returns after `apply(assignments)`: `desired_table(assignments, owner)`."""
        return desired_table(assignments, self.owner)

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None:
        """Replaces cthm's table with exactly `assignments`, in one transaction; afterwards
        `read(namespace) == self.desired(assignments)`, marked with this backend's owner.
        Nothing else in the namespace changes."""
        text = str(render(assignments, self.owner))  # raises UnsafeValue before anything runs
        self.runner.run(namespace, text)

    def update(
        self, namespace: str, verified: object, assignments: Sequence[Assignment]
    ) -> KernelTable | None:
        """PARTIAL sync: makes the table hold `assignments` by adding and deleting set elements,
        given `verified`, the table last verified in this namespace (by read() or update()).

        Returns None, writing nothing, when that cannot express the change (a set, and so a
        helper object or chain, would appear or go; `verified` is not clean, not this backend's,
        or of the previous layout): the caller then does a full sync. Otherwise runs one
        transaction (none when nothing changes), reads back only the sets it touched, and
        returns `verified` with those sets' assignments replaced by what the kernel holds, to
        be compared with `desired(assignments)`. Raises NftError when nft refuses (e.g. a port
        deleted by hand: ENOENT); being one transaction, the kernel is then unchanged.
        """
        # `object`: the agent's port types it as its KernelState; only a KernelTable (this
        # backend's own read-back) can be updated.
        if not isinstance(verified, KernelTable) or not verified.clean:
            return None
        if verified.owner != self.owner:
            return None
        before = self._verified_sets(namespace, verified)
        after = _port_sets(assignments)
        if before.keys() != after.keys():
            return None
        touched = sorted(
            (key for key, ports in after.items() if ports != before[key]), key=_set_order
        )
        if not touched:
            return verified
        tx = Transaction()  # deletes, then adds, in set name order: deterministic text
        for key in touched:
            if before[key] - after[key]:
                tx.delete_elements(key[0], helper_object_name(*key[1:]), before[key] - after[key])
        for key in touched:
            if after[key] - before[key]:
                tx.add_elements(key[0], helper_object_name(*key[1:]), after[key] - before[key])
        self.runner.run(namespace, str(tx))  # raises UnsafeValue before anything runs
        sets = dict(before)
        garbage = list(verified.garbage)
        gone: list[tuple[Protocol, int, Direction]] = []
        new: list[Assignment] = []
        for key in touched:
            direction, helper_type, protocol = key
            name = set_name(direction, helper_object_name(helper_type, protocol))
            text = self.runner.run(namespace, LIST_SET_COMMAND.format(name=name), json=True)
            listed, problems = parse_set(text, name)
            garbage.extend(problems)
            read = set(listed)
            gone.extend((protocol, port, direction) for port in before[key] - read)
            new.extend(
                Assignment(protocol, port, helper_type, direction) for port in read - before[key]
            )
            sets[key] = read
        # `verified.assignments` is sorted with unique keys and few ports change: edit a copy
        # in place (all removals first, so a port moving between sets is never mistaken for
        # its new self) rather than rebuild and sort a thousand assignments.
        result = list(verified.assignments)
        for sort_key in gone:
            del result[bisect_left(result, sort_key, key=_sort_key)]
        for assignment in new:
            result.insert(bisect_left(result, _sort_key(assignment), key=_sort_key), assignment)
        table = KernelTable(tuple(result), verified.helpers, tuple(garbage), verified.owner)
        with self._parsed_lock:
            self._sets[namespace] = (table, sets)
        return table

    def _verified_sets(self, namespace: str, verified: KernelTable) -> dict[SetKey, set[int]]:
        """`verified`'s assignments by set: kept from the last update() of the namespace when
        `verified` is what it returned (the usual case), so a partial sync of a router holding
        a thousand bindings does not regroup them."""
        with self._parsed_lock:
            last = self._sets.get(namespace)
        if last is not None and last[0] is verified:
            return last[1]  # never mutated: update() replaces a changed set whole
        return _port_sets(verified.assignments)

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
