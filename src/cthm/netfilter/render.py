"""Pure rendering: a router's assignments -> one transaction that replaces cthm's table whole
(a FULL sync; `NftablesBackend.update` does the partial one with `add/delete element`).

    add table inet cthm          (so the delete below never fails)
    delete table inet cthm       (drops rules before sets and objects: no EBUSY, nothing stale)
    add table inet cthm { comment "cthm:<deployment id>"; }    (whose table it is)
    add ct helper ...            (one per (type, protocol), sorted by name; shared by chains)
    add set inet cthm ingress-ftp-tcp { type inet_service; elements = { 21 }; }
                                 (one per (direction, helper object) in use, sorted by name)
    add chain inet cthm prerouting { ... }     (only if ingress has assignments)
    add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"
                                 (one per set of the direction, in set name order)
    add chain inet cthm output { ... }         (only if output has assignments)
    add rule ...                 (likewise)

nft runs the whole text as one all-or-nothing transaction, so a table of the previous layout
(map rules) is replaced with no moment in which a bound port has no helper. With no assignments
the result is an empty `table inet cthm` (no chain, so no per-packet cost): `read()` then
returns an empty KernelTable, which is `desired_table([])`. Deleting the table is
`render_delete()`, for a router that is gone.
"""

from __future__ import annotations

from collections.abc import Iterable

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import UnsafeValue
from cthm.netfilter.model import (
    CHAINS,
    HelperObject,
    KernelTable,
    check_assignment,
    check_direction,
    check_helper_type,
    check_owner,
    check_port,
    check_protocol,
    expected_l3proto,
    helper_object_name,
    set_name,
    share,
)
from cthm.netfilter.transaction import Transaction

_TCP, _UDP = Protocol.TCP, Protocol.UDP
_INGRESS, _OUTPUT = Direction.INGRESS, Direction.OUTPUT


def _normalized(assignments: Iterable[object]) -> list[Assignment]:
    """Checked, sorted by (protocol, port, direction), exact duplicates merged; two helpers on
    one (protocol, port) in one direction refused (the same port may have a helper per
    direction)."""
    by_key: dict[tuple[Protocol, int, Direction], Assignment] = {}
    checked_helpers: set[str] = set()  # a router's thousand rows share a handful of helpers
    for item in assignments:
        assignment = item if isinstance(item, Assignment) else check_assignment(item)
        # The hot path of every reconcile: identity and type tests first, the checks (which
        # raise with a message) only for a value that fails them.
        protocol, port, direction = assignment.protocol, assignment.port, assignment.direction
        if protocol is not _TCP and protocol is not _UDP:
            check_protocol(protocol)
        if type(port) is not int or not 1 <= port <= 65535:
            check_port(port)
        if direction is not _INGRESS and direction is not _OUTPUT:
            check_direction(direction)
        helper = assignment.helper
        if type(helper) is not str or helper not in checked_helpers:
            checked_helpers.add(check_helper_type(helper))
        key = (protocol, port, direction)
        previous = by_key.get(key)
        if previous is not None and previous.helper != helper:
            raise UnsafeValue(
                f"{direction} {protocol} port {port} assigned both {previous.helper} and {helper}"
            )
        by_key[key] = assignment
    # Sorting on the keys is much cheaper than on the dataclasses.
    return [by_key[key] for key in sorted(by_key)]


def _name_order(name: str) -> tuple[str, str]:
    return (name.casefold(), name)


def render(assignments: Iterable[Assignment], owner: str | None = None) -> Transaction:
    """The transaction that makes cthm's table hold exactly `assignments`, marked with the
    deployment id `owner` (its comment; none when None). Never raises: an invalid input is kept
    in the transaction and raised when its text is asked for."""
    tx = Transaction()
    try:
        wanted = _normalized(assignments)
    except UnsafeValue as exc:
        tx.fail(exc)
        return tx
    tx.add_table()
    tx.delete_table()
    tx.add_table(owner)  # the table is created here: the comment is set (and only ever here)
    if not wanted:
        return tx
    kinds = {(a.helper, a.protocol) for a in wanted}
    names = {kind: helper_object_name(*kind) for kind in kinds}
    for kind in sorted(kinds, key=lambda k: _name_order(names[k])):
        tx.add_helper(*kind)
    # One pass groups the ports by set; `wanted` is sorted, so each set's ports come in order.
    sets: dict[tuple[Direction, str], list[int]] = {}
    for a in wanted:
        sets.setdefault((a.direction, names[(a.helper, a.protocol)]), []).append(a.port)
    ordered = sorted(sets, key=lambda key: _name_order(set_name(*key)))
    for direction, helper_name in ordered:
        tx.add_port_set(direction, helper_name, sets[(direction, helper_name)])
    for direction in CHAINS:
        in_chain = [key for key in ordered if key[0] is direction]
        if not in_chain:
            continue  # a chain only for a direction in use
        tx.add_chain(direction)
        for key in in_chain:
            tx.add_set_rule(set_name(*key))
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


def desired_table(assignments: Iterable[Assignment], owner: str | None = None) -> KernelTable:
    """What `NftablesBackend.read()` returns after `apply(assignments)` succeeded (with the
    backend's `owner`).

    Raises UnsafeValue for assignments or an owner `render` would refuse.
    """
    # The assignments shared with read-backs (model.share): a read-back compared with this
    # table then finds mostly the same objects (identity, not __eq__).
    wanted = [share(a) for a in _normalized(assignments)]
    if owner is not None:
        check_owner(owner)
    kinds = {(a.helper, a.protocol) for a in wanted}
    helpers = frozenset(
        HelperObject(helper_object_name(kind, protocol), kind, protocol, expected_l3proto(kind))
        for kind, protocol in kinds
    )
    return KernelTable(assignments=tuple(wanted), helpers=helpers, garbage=(), owner=owner)
