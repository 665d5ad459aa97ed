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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TypeVar

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import UnsafeValue
from cthm.netfilter.model import (
    CHAINS,
    RENDERED_L3PROTO,
    SET_FLAGS,
    SET_TYPE,
    TABLE_FAMILY,
    TABLE_NAME,
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
    owner_comment,
    set_name,
    share_all,
    shared_helper,
)
from cthm.netfilter.transaction import (
    BaseChain,
    HelperDefinition,
    Operation,
    PortSet,
    SetRule,
    Table,
    Transaction,
    Verb,
)

_TCP, _UDP = Protocol.TCP, Protocol.UDP
_INGRESS, _OUTPUT = Direction.INGRESS, Direction.OUTPUT


def _normalized(assignments: Iterable[object]) -> list[Assignment]:
    """Checked, sorted by (protocol, port, direction), exact duplicates merged; two helpers on
    one (protocol, port) in one direction refused (the same port may have a helper per
    direction)."""
    if type(assignments) is list or type(assignments) is tuple:
        # Mostly already so (derived sorted, or a desired table's): checked in one pass.
        in_order = _already_normalized(assignments)
        if in_order is not None:
            return in_order
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


def _already_normalized(assignments: Sequence[object]) -> list[Assignment] | None:
    """`assignments` as a list when they already are what _normalized() returns: Assignments
    of valid values in strictly increasing (protocol, port, direction) order (so no duplicate
    and no two helpers on one key); None otherwise (then _normalized() merges, sorts or
    raises)."""
    checked_helpers: set[str] = set()
    previous: tuple[Protocol, int, Direction] | None = None
    for a in assignments:
        if type(a) is not Assignment:
            return None
        protocol, port, direction, helper = a.protocol, a.port, a.direction, a.helper
        if (
            (protocol is not _TCP and protocol is not _UDP)
            or type(port) is not int
            or not 1 <= port <= 65535
            or (direction is not _INGRESS and direction is not _OUTPUT)
            or type(helper) is not str
        ):
            return None
        if helper not in checked_helpers:
            try:
                checked_helpers.add(check_helper_type(helper))
            except UnsafeValue:
                return None
        key = (protocol, port, direction)
        if previous is not None and not previous < key:
            return None
        previous = key
    return list(assignments)  # type: ignore[arg-type]  # (each checked above)


def _name_order(name: str) -> tuple[str, str]:
    return (name.casefold(), name)


@dataclass(frozen=True, slots=True)
class _Kind:
    """What render writes for one (helper type, protocol): made once, shared by every render."""

    name: str
    order: tuple[str, str]
    helper: HelperObject
    operation: Operation
    line: str


@dataclass(frozen=True, slots=True)
class _SetOf:
    """What render writes for one (direction, helper type, protocol) but the set's ports."""

    name: str
    order: tuple[str, str]
    entry: tuple[Direction, str]  # (direction, helper object name), as Transaction keeps it
    prefix: str  # the set's line up to its first port
    rule: Operation
    rule_line: str


# Made once per value and reused (immutable; a handful of kinds in any deployment): a router's
# full sync renders the same objects, rules and chains as every other router's (measured: the
# per-operation checks and objects were most of render's ~0.1 ms a router of 10). Only values
# _normalized() and check_owner() accepted are keys. Emptied past a bound.
_KINDS: dict[tuple[str, Protocol], _Kind] = {}
_SETS: dict[tuple[Direction, str, Protocol], _SetOf] = {}
_HEADS: dict[str | None, tuple[tuple[Operation, ...], tuple[str, ...]]] = {}
_CHAINS: dict[Direction, tuple[Operation, str]] = {}
_MAX_MEMO = 4096
_K = TypeVar("_K")
_V = TypeVar("_V")


def _memo(memo: dict[_K, _V], key: _K, make: Callable[[_K], _V]) -> _V:
    found = memo.get(key)
    if found is None:
        if len(memo) >= _MAX_MEMO:
            memo.clear()
        found = memo.setdefault(key, make(key))
    return found


def _line(operation: Operation) -> str:
    return operation.text() + "\n"


def _make_head(owner: str | None) -> tuple[tuple[Operation, ...], tuple[str, ...]]:
    # The table is created by the third operation: the comment is set there (and only there).
    comment = owner_comment(owner) if owner is not None else None  # raises UnsafeValue
    operations = (
        Operation(Verb.ADD, Table()),  # so the delete never fails
        Operation(Verb.DELETE, Table()),
        Operation(Verb.ADD, Table(comment)),
    )
    return operations, tuple(map(_line, operations))


# The head's first two lines: they replace a table that is there. Where the kernel just said
# there is none, the rest alone creates it (`into_absent_table`).
_REPLACING = _line(Operation(Verb.ADD, Table())) + _line(Operation(Verb.DELETE, Table()))


def into_absent_table(text: str) -> str:
    """render()'s text for a namespace with no cthm table: without the add and delete of the
    table that make it replace one (nft's work for two more table operations, ~30 us of ~250,
    measured). Should a table appear meanwhile, the rest adds to it instead of replacing it;
    the full sync's read-back then differs from the desired table and the sync fails (retried,
    replacing it): never taken for applied."""
    return text[len(_REPLACING) :] if text.startswith(_REPLACING) else text


def _make_kind(kind: tuple[str, Protocol]) -> _Kind:
    helper_type, protocol = kind
    name = helper_object_name(helper_type, protocol)
    helper = HelperObject(name, helper_type, protocol, RENDERED_L3PROTO)
    operation = Operation(Verb.ADD, HelperDefinition(helper))
    return _Kind(name, _name_order(name), helper, operation, _line(operation))


def _make_set(key: tuple[Direction, str, Protocol]) -> _SetOf:
    direction, helper_type, protocol = key
    helper_name = helper_object_name(helper_type, protocol)
    name = set_name(direction, helper_name)
    # PortSet.text() up to its ports (a test holds the two equal).
    prefix = f"add set {TABLE_FAMILY} {TABLE_NAME} {name} {{ type {SET_TYPE};"
    prefix += f" flags {SET_FLAGS};" if SET_FLAGS else ""
    rule = Operation(Verb.ADD, SetRule(CHAINS[direction].name, protocol, name, helper_name))
    return _SetOf(
        name,
        _name_order(name),
        (direction, helper_name),
        prefix + " elements = { ",
        rule,
        _line(rule),
    )


def _make_chain(direction: Direction) -> tuple[Operation, str]:
    operation = Operation(Verb.ADD, BaseChain(CHAINS[direction]))
    return operation, _line(operation)


def render(assignments: Iterable[Assignment], owner: str | None = None) -> Transaction:
    """The transaction that makes cthm's table hold exactly `assignments`, marked with the
    deployment id `owner` (its comment; none when None). Never raises: an invalid input is kept
    in the transaction and raised when its text is asked for."""
    tx = Transaction()
    try:
        wanted = _normalized(assignments)
        head_operations, head_lines = _memo(_HEADS, owner, _make_head)
    except UnsafeValue as exc:
        tx.fail(exc)
        return tx
    operations = list(head_operations)
    lines = list(head_lines)
    # One pass groups the ports by set; `wanted` is sorted, so each set's ports come in order,
    # once each (a (protocol, port, direction) is unique).
    by_set: dict[tuple[Direction, str, Protocol], list[int]] = {}
    for a in wanted:
        key = (a.direction, a.helper, a.protocol)
        ports = by_set.get(key)
        if ports is None:
            by_set[key] = [a.port]
        else:
            ports.append(a.port)
    kinds = sorted(
        (_memo(_KINDS, kind, _make_kind) for kind in {k[1:] for k in by_set}),
        key=attrgetter("order"),
    )
    sets = sorted(
        ((_memo(_SETS, key, _make_set), ports) for key, ports in by_set.items()),
        key=lambda item: item[0].order,
    )
    for kind in kinds:
        operations.append(kind.operation)
        lines.append(kind.line)
    for set_of, ports in sets:
        operations.append(Operation(Verb.ADD, PortSet(set_of.name, tuple(ports))))
        lines.append(f"{set_of.prefix}{', '.join(map(str, ports))} }}; }}\n")
    for direction in CHAINS:
        in_chain = [set_of for set_of, _ in sets if set_of.entry[0] is direction]
        if not in_chain:
            continue  # a chain only for a direction in use
        chain_operation, chain_line = _memo(_CHAINS, direction, _make_chain)
        operations.append(chain_operation)
        lines.append(chain_line)
        for set_of in in_chain:
            operations.append(set_of.rule)
            lines.append(set_of.rule_line)
    tx.extend_checked(
        operations,
        lines,
        (kind.helper for kind in kinds),
        ((set_of.name, set_of.entry) for set_of, _ in sets),
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


def desired_table(assignments: Iterable[Assignment], owner: str | None = None) -> KernelTable:
    """What `NftablesBackend.read()` returns after `apply(assignments)` succeeded (with the
    backend's `owner`).

    Raises UnsafeValue for assignments or an owner `render` would refuse.
    """
    # The assignments shared with read-backs (model.share): a read-back compared with this
    # table then finds mostly the same objects (identity, not __eq__).
    wanted = share_all(_normalized(assignments))
    if owner is not None:
        check_owner(owner)
    helpers = frozenset(
        _memo(_EXPECTED, kind, _expected_helper)
        for kind in {(a.helper, a.protocol) for a in wanted}
    )
    return KernelTable(assignments=wanted, helpers=helpers, garbage=(), owner=owner)


# The helper object read back for a kind, made once per kind (values _normalized() accepted).
_EXPECTED: dict[tuple[str, Protocol], HelperObject] = {}


def _expected_helper(kind: tuple[str, Protocol]) -> HelperObject:
    helper_type, protocol = kind
    name = helper_object_name(helper_type, protocol)
    return shared_helper(name, helper_type, protocol, expected_l3proto(helper_type))
