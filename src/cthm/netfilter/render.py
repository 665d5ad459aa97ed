"""Pure rendering: a router's assignments -> one transaction that replaces cthm's table whole.

    add table inet cthm          (so the delete below never fails)
    delete table inet cthm       (drops rules before objects: no EBUSY, no stale object)
    add table inet cthm
    add ct helper ...            (one per (type, protocol), sorted by name)
    add chain inet cthm prerouting { ... }
    add rule ... map { ... }     (one per protocol that has assignments: tcp, then udp)

nft runs the whole text as one all-or-nothing transaction. With no assignments the result is
an empty `table inet cthm` (no chain, so no per-packet cost): `read()` then returns an empty
KernelTable, which is `desired_table([])`. Deleting the table is `render_delete()`, for a
router that is gone.
"""

from __future__ import annotations

from collections.abc import Iterable

from cthm.domain import Assignment, Protocol
from cthm.netfilter.errors import UnsafeValue
from cthm.netfilter.model import (
    HelperObject,
    KernelTable,
    check_assignment,
    check_helper_type,
    check_port,
    check_protocol,
    expected_l3proto,
    helper_object_name,
)
from cthm.netfilter.transaction import Transaction


def _normalized(assignments: Iterable[object]) -> list[Assignment]:
    """Checked, sorted, exact duplicates merged; two helpers on one (protocol, port) refused."""
    by_key: dict[tuple[Protocol, int], Assignment] = {}
    checked_helpers: set[str] = set()  # a router's thousand rows share a handful of helpers
    for item in assignments:
        assignment = item if isinstance(item, Assignment) else check_assignment(item)
        check_protocol(assignment.protocol)
        check_port(assignment.port)
        helper = assignment.helper
        if type(helper) is not str or helper not in checked_helpers:
            checked_helpers.add(check_helper_type(helper))
        key = (assignment.protocol, assignment.port)
        previous = by_key.get(key)
        if previous is not None and previous.helper != assignment.helper:
            raise UnsafeValue(
                f"{key[0]} port {key[1]} assigned both {previous.helper} and {assignment.helper}"
            )
        by_key[key] = assignment
    # Sorting on the (protocol, port) keys is much cheaper than on the dataclasses.
    return [by_key[key] for key in sorted(by_key)]


def _name_order(name: str) -> tuple[str, str]:
    return (name.casefold(), name)


def render(assignments: Iterable[Assignment]) -> Transaction:
    """The transaction that makes cthm's table hold exactly `assignments`. Never raises: an
    invalid input is kept in the transaction and raised when its text is asked for."""
    tx = Transaction()
    try:
        wanted = _normalized(assignments)
    except UnsafeValue as exc:
        tx.fail(exc)
        return tx
    tx.add_table()
    tx.delete_table()
    tx.add_table()
    if not wanted:
        return tx
    kinds = {(a.helper, a.protocol) for a in wanted}
    names = {kind: helper_object_name(*kind) for kind in kinds}
    for kind in sorted(kinds, key=lambda k: _name_order(names[k])):
        tx.add_helper(*kind)
    tx.add_chain()
    for protocol in sorted({a.protocol for a in wanted}):
        tx.add_helper_map(
            protocol,
            [(a.port, names[(a.helper, a.protocol)]) for a in wanted if a.protocol == protocol],
        )
    return tx


def render_delete() -> Transaction:
    """Deletes cthm's table (fails with NftNotFound when there is none)."""
    tx = Transaction()
    tx.delete_table()
    return tx


def render_probe(kinds: Iterable[tuple[str, Protocol]]) -> Transaction:
    """For a DRY RUN only: defines one helper object per kind in a fresh cthm table. The kernel
    refuses a type it lacks (ENOENT); a dry run changes nothing either way. The table is
    recreated inside the transaction so an existing object of the same name (whose `add` would be
    a silent no-op) cannot hide a missing type."""
    tx = Transaction()
    tx.add_table()
    tx.delete_table()
    tx.add_table()
    for helper_type, protocol in sorted(set(kinds)):
        tx.add_helper(helper_type, protocol)
    return tx


def desired_table(assignments: Iterable[Assignment]) -> KernelTable:
    """What `NftablesBackend.read()` returns after `apply(assignments)` succeeded.

    Raises UnsafeValue for assignments `render` would refuse.
    """
    wanted = _normalized(assignments)
    kinds = {(a.helper, a.protocol) for a in wanted}
    helpers = frozenset(
        HelperObject(helper_object_name(kind, protocol), kind, protocol, expected_l3proto(kind))
        for kind, protocol in kinds
    )
    return KernelTable(assignments=tuple(wanted), helpers=helpers, garbage=())
