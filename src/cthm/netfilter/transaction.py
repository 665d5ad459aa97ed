"""An nftables transaction: an ordered list of operations on cthm's table (its helper objects,
port sets, chains, rules, set elements), each validated when it is added. The first invalid
operation is kept and raised when the text is asked for, so a transaction is either entirely
valid or never reaches nft (knftables' design).

`str(tx)` is exactly the text given to `nft -f -`, one operation per line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from cthm.domain import Direction, Protocol
from cthm.netfilter.errors import UnsafeValue
from cthm.netfilter.model import (
    CHAINS,
    RENDERED_L3PROTO,
    SET_FLAGS,
    SET_TYPE,
    TABLE_FAMILY,
    TABLE_NAME,
    ChainSpec,
    HelperObject,
    check_direction,
    check_helper_type,
    check_port,
    check_protocol,
    helper_object_name,
    owner_comment,
    set_name,
    shown,
)

_TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
_PROTOCOLS = frozenset(p.value for p in Protocol)


class Verb(StrEnum):
    ADD = "add"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Table:
    """The table; `comment` (set only where the table is created) marks whose it is."""

    comment: str | None = None

    def text(self) -> str:
        if self.comment is None:
            return f"table {_TABLE}"
        return f'table {_TABLE} {{ comment "{self.comment}"; }}'


@dataclass(frozen=True, slots=True)
class HelperDefinition:
    helper: HelperObject

    def text(self) -> str:
        h = self.helper
        return (
            f'ct helper {_TABLE} {h.name} {{ type "{h.type}" protocol {h.protocol}; '
            f"l3proto {h.l3proto}; }}"
        )


@dataclass(frozen=True, slots=True)
class BaseChain:
    """A direction's chain: hooked at prerouting (ingress) or output, after conntrack lookup."""

    spec: ChainSpec = CHAINS[Direction.INGRESS]

    def text(self) -> str:
        c = self.spec
        priority = "filter" if c.priority == 0 else str(c.priority)
        return (
            f"chain {_TABLE} {c.name} {{ type {c.type} hook {c.hook} "
            f"priority {priority}; policy {c.policy}; }}"
        )


@dataclass(frozen=True, slots=True)
class HelperMapRule:
    """One rule per protocol and direction: an anonymous map port -> helper object (constant
    per-packet cost)."""

    protocol: Protocol
    entries: tuple[tuple[int, str], ...]
    chain: str = CHAINS[Direction.INGRESS].name

    def text(self) -> str:
        elements = ", ".join(f'{port} : "{name}"' for port, name in self.entries)
        return (
            f"rule {_TABLE} {self.chain} ct helper set {self.protocol} dport map {{ {elements} }}"
        )


def _ports(ports: tuple[int, ...]) -> str:
    return ", ".join(map(str, ports))


@dataclass(frozen=True, slots=True)
class PortSet:
    """A named set of ports: which ports of one direction get one helper object."""

    name: str
    ports: tuple[int, ...]

    def text(self) -> str:
        elements = f" elements = {{ {_ports(self.ports)} }};" if self.ports else ""
        flags = f" flags {SET_FLAGS};" if SET_FLAGS else ""
        return f"set {_TABLE} {self.name} {{ type {SET_TYPE};{flags}{elements} }}"


@dataclass(frozen=True, slots=True)
class SetRule:
    """`tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"`: one per (direction, helper object)."""

    chain: str
    protocol: Protocol
    set_name: str
    helper: str

    def text(self) -> str:
        return (
            f"rule {_TABLE} {self.chain} {self.protocol} dport @{self.set_name} "
            f'ct helper set "{self.helper}"'
        )


@dataclass(frozen=True, slots=True)
class SetElements:
    """Ports added to or deleted from an existing set (a partial sync)."""

    set_name: str
    ports: tuple[int, ...]

    def text(self) -> str:
        return f"element {_TABLE} {self.set_name} {{ {_ports(self.ports)} }}"


TableObject = Table | HelperDefinition | BaseChain | HelperMapRule | PortSet | SetRule | SetElements


@dataclass(frozen=True, slots=True)
class Operation:
    verb: Verb
    object: TableObject

    def text(self) -> str:
        return f"{self.verb} {self.object.text()}"


class Transaction:
    """Operations on `table inet cthm`, checked as they are added; see the module docstring."""

    def __init__(self) -> None:
        self._operations: list[Operation] = []
        # Each operation's line, made as it is added: render() adds lines it made once per
        # kind of object (its fast path) alongside their operations.
        self._lines: list[str] = []
        self._error: UnsafeValue | None = None
        self._helpers: dict[str, HelperObject] = {}
        # Sets added by this transaction: name -> (direction, helper object name).
        self._sets: dict[str, tuple[Direction, str]] = {}

    @property
    def operations(self) -> tuple[Operation, ...]:
        return tuple(self._operations)

    @property
    def error(self) -> UnsafeValue | None:
        return self._error

    def __len__(self) -> int:
        return len(self._operations)

    def check(self) -> None:
        """Raises the first invalid operation's error, if any."""
        if self._error is not None:
            raise self._error

    def __str__(self) -> str:
        self.check()
        return "".join(self._lines)

    def fail(self, error: UnsafeValue) -> None:
        """Records an error found while rendering; the first one is kept."""
        if self._error is None:
            self._error = error

    def _append(self, verb: Verb, obj: TableObject) -> None:
        if self._error is None:
            operation = Operation(verb, obj)
            self._operations.append(operation)
            self._lines.append(operation.text() + "\n")

    def extend_checked(
        self,
        operations: list[Operation],
        lines: list[str],
        helpers: Iterable[HelperObject],
        sets: Iterable[tuple[str, tuple[Direction, str]]],
    ) -> None:
        """For render() only: operations whose values it checked, with their lines (each
        `op.text() + "\n"`) and the helper objects and sets they add."""
        if self._error is None:
            self._operations.extend(operations)
            self._lines.extend(lines)
            self._helpers.update((helper.name, helper) for helper in helpers)
            self._sets.update(sets)

    def add_table(self, owner: str | None = None) -> None:
        """Adds the table; `owner` (a deployment id) becomes its comment `cthm:<owner>`. nft
        keeps the comment of a table that exists: only a table this transaction creates gets
        it."""
        try:
            comment = owner_comment(owner) if owner is not None else None
        except UnsafeValue as exc:
            self.fail(exc)
            return
        self._append(Verb.ADD, Table(comment))

    def delete_table(self) -> None:
        self._append(Verb.DELETE, Table())
        self._helpers.clear()
        self._sets.clear()

    def add_chain(self, direction: Direction = Direction.INGRESS) -> None:
        """Adds the base chain of `direction` (prerouting for ingress, output for output)."""
        try:
            spec = CHAINS[check_direction(direction)]
        except UnsafeValue as exc:
            self.fail(exc)
            return
        self._append(Verb.ADD, BaseChain(spec))

    def add_helper(self, helper_type: str, protocol: Protocol) -> str | None:
        """Adds the `ct helper` object for (type, protocol); returns its name (None if invalid)."""
        try:
            name = helper_object_name(check_helper_type(helper_type), check_protocol(protocol))
            if name in self._helpers:
                raise UnsafeValue(f"helper object {name} added twice")
        except UnsafeValue as exc:
            self.fail(exc)
            return None
        helper = HelperObject(name, helper_type, protocol, RENDERED_L3PROTO)
        self._helpers[name] = helper
        self._append(Verb.ADD, HelperDefinition(helper))
        return name

    def add_helper_map(
        self,
        protocol: Protocol,
        entries: Iterable[tuple[int, str]],
        direction: Direction = Direction.INGRESS,
    ) -> None:
        """Adds the rule, in `direction`'s chain, mapping ports of `protocol` to helper objects
        added earlier."""
        try:
            check_protocol(protocol)
            chain = CHAINS[check_direction(direction)].name
            checked: dict[int, str] = {}
            for port, name in entries:
                check_port(port)
                helper = self._helpers.get(name)
                if helper is None or helper.protocol != protocol:
                    raise UnsafeValue(
                        f"no {protocol} helper object {shown(name)} in this transaction"
                    )
                if port in checked:
                    raise UnsafeValue(f"{protocol} port {port} mapped twice")
                checked[port] = name
            if not checked:
                raise UnsafeValue(f"empty {protocol} helper map")
        except UnsafeValue as exc:
            self.fail(exc)
            return
        self._append(Verb.ADD, HelperMapRule(protocol, tuple(sorted(checked.items())), chain))

    def add_port_set(
        self, direction: Direction, helper_name: str, ports: Iterable[int]
    ) -> str | None:
        """Adds the set of `ports` that get the helper object `helper_name` (added earlier) in
        `direction`; returns the set's name (None if invalid). Never empty: a set exists only
        while it has elements."""
        try:
            check_direction(direction)
            if helper_name not in self._helpers:
                raise UnsafeValue(f"no helper object {shown(helper_name)} in this transaction")
            checked = _checked_ports(ports)
            name = set_name(direction, helper_name)
            if name in self._sets:
                raise UnsafeValue(f"set {name} added twice")
        except UnsafeValue as exc:
            self.fail(exc)
            return None
        self._sets[name] = (direction, helper_name)
        self._append(Verb.ADD, PortSet(name, checked))
        return name

    def add_set_rule(self, set_name: str) -> None:
        """Adds the rule giving the ports of `set_name` (added earlier) their helper object, in
        the set's direction's chain."""
        entry = self._sets.get(set_name)
        if entry is None:
            self.fail(UnsafeValue(f"no set {shown(set_name)} in this transaction"))
            return
        direction, helper_name = entry
        protocol = self._helpers[helper_name].protocol
        self._append(Verb.ADD, SetRule(CHAINS[direction].name, protocol, set_name, helper_name))

    def add_elements(self, direction: Direction, helper_name: str, ports: Iterable[int]) -> None:
        """Adds `ports` to the existing set of (direction, helper object)."""
        self._elements(Verb.ADD, direction, helper_name, ports)

    def delete_elements(self, direction: Direction, helper_name: str, ports: Iterable[int]) -> None:
        """Deletes `ports` from the existing set of (direction, helper object); the kernel
        refuses (ENOENT) a port the set lacks, and the whole transaction with it."""
        self._elements(Verb.DELETE, direction, helper_name, ports)

    def _elements(
        self, verb: Verb, direction: Direction, helper_name: str, ports: Iterable[int]
    ) -> None:
        try:
            helper_type, _, protocol = str(helper_name).rpartition("-")
            known = protocol in _PROTOCOLS
            if not known or helper_object_name(helper_type, Protocol(protocol)) != helper_name:
                raise UnsafeValue(f"{shown(helper_name)} is not a helper object name")
            name = set_name(direction, helper_name)
            checked = _checked_ports(ports)
        except UnsafeValue as exc:
            self.fail(exc)
            return
        self._append(verb, SetElements(name, checked))


def _checked_ports(ports: Iterable[int]) -> tuple[int, ...]:
    """Ports sorted, each valid and given once; at least one."""
    checked: set[int] = set()
    for port in ports:
        if port in checked:
            raise UnsafeValue(f"port {port} given twice")
        checked.add(check_port(port))
    if not checked:
        raise UnsafeValue("no ports")
    return tuple(sorted(checked))
