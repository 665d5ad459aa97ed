"""An nftables transaction: an ordered list of operations on cthm's table, each validated when it
is added. The first invalid operation is kept and raised when the text is asked for, so a
transaction is either entirely valid or never reaches nft (knftables' design).

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
    shown,
)

_TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"


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


TableObject = Table | HelperDefinition | BaseChain | HelperMapRule


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
        self._error: UnsafeValue | None = None
        self._helpers: dict[str, HelperObject] = {}

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
        return "".join(op.text() + "\n" for op in self._operations)

    def fail(self, error: UnsafeValue) -> None:
        """Records an error found while rendering; the first one is kept."""
        if self._error is None:
            self._error = error

    def _append(self, verb: Verb, obj: TableObject) -> None:
        if self._error is None:
            self._operations.append(Operation(verb, obj))

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
