"""An honest in-memory stand-in for nft in many namespaces, for tests of code above netfilter.

It parses the same text the renderer writes (plus what tests need to build foreign state), one
command per line, and applies a transaction to a copy of the namespace, committing only if
every command succeeds, as the kernel does. What it models, each measured against nft 1.0.6 on
this kernel (tests/netfilter run the same cases against real nft and the fake):

- `add table` of an existing table and `add ct helper` of an existing name (whatever its
  definition) are silent no-ops; `create table` of an existing table fails (EEXIST);
- deleting a missing table/chain/object, or adding into one, fails (ENOENT);
- deleting a ct helper object a rule still references fails (EBUSY); deleting a chain deletes
  its rules; a duplicate key in a map fails (EEXIST);
- a helper type (and protocol) the "kernel" lacks fails (ENOENT); helpers with no IPv6 variant
  fail with `l3proto ip6` and read back as `ip` when added with `inet`;
- `add chain` of an existing base chain may change its policy only (else EOPNOTSUPP);
- named sets of ports (`type inet_service`, optionally `flags dynamic`, which nft 1.0.6's JSON
  does not show) and rules matching them (`tcp dport @set`):
  `add set` of an existing set adds its elements (of another type or flags: EEXIST); adding
  an element the set holds is a silent no-op (`create element`: EEXIST); deleting a missing
  element, or from a missing set, fails (ENOENT); deleting a set a rule references fails
  (EBUSY); a rule naming a missing set fails (ENOENT); a set's elements are listed in
  ascending order (as nft lists them, bitmap or hash backend) and an empty set has no `elem`;
- a dry run checks everything and commits nothing;
- `list table F N` / `list ruleset` / `list set F T NAME` answer in JSON shaped as nft's
  (json=True), which, as nft 1.0.6's, leaves a table's comment out; a text listing of one
  table (json=False) shows only its first line and its comment (all cthm reads from text);
- a table's comment is set when the table is created, never changed by `add table`.

Anything else raises FakeUnsupported (not an NftError, so no caller mistakes it for a kernel
answer). Namespaces exist only when a test adds them (else NamespaceNotFound).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cthm.domain import KERNEL_HELPERS, Protocol
from cthm.netfilter.errors import NamespaceNotFound, translate_error
from cthm.netfilter.model import check_namespace

_FAMILIES = ("ip", "ip6", "inet")
_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50}
_PRIORITIES["srcnat"] = 100
_ENOENT = "No such file or directory"
_EEXIST = "File exists"
_EBUSY = "Device or resource busy"
_EOPNOTSUPP = "Operation not supported"
_TOKEN = re.compile(r'"[^"\n]*"|[{}:;,]|[^\s{}:;,"]+')
_METAINFO = {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}


class FakeUnsupported(Exception):
    """The fake does not understand this text (real nft might, or might refuse it)."""


class _KernelError(Exception):
    def __init__(self, errno_text: str, line: str) -> None:
        super().__init__(f"Error: Could not process rule: {errno_text}\n{line}")


@dataclass(frozen=True, slots=True)
class FakeRun:
    """One call to the fake, as made; `ok` tells whether it succeeded."""

    namespace: str
    commands: str
    json: bool
    dry_run: bool
    ok: bool


@dataclass(slots=True)
class _Helper:
    name: str
    type: str
    protocol: str
    l3proto: str
    handle: int


@dataclass(frozen=True, slots=True)
class _BaseSpec:
    type: str
    hook: str
    prio: int
    policy: str


@dataclass(slots=True)
class _Set:
    name: str
    type: str
    handle: int
    elements: set[int] = field(default_factory=set)
    dynamic: bool = False  # `flags dynamic`


@dataclass(slots=True)
class _Rule:
    handle: int
    expr: list[dict[str, Any]]
    refs: frozenset[str]
    comment: str | None
    set_refs: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Chain:
    name: str
    handle: int
    base: _BaseSpec | None
    rules: list[_Rule] = field(default_factory=list)


@dataclass(slots=True)
class _Table:
    family: str
    name: str
    handle: int
    comment: str | None = None
    helpers: dict[str, _Helper] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, _Chain] = field(default_factory=dict)
    last_handle: int = 0

    def next_handle(self) -> int:
        self.last_handle += 1
        return self.last_handle


@dataclass(slots=True)
class _Namespace:
    tables: dict[tuple[str, str], _Table] = field(default_factory=dict)
    last_table_handle: int = 0


class FakeNftables:
    """An NftRunner over in-memory namespaces. Thread-safe."""

    def __init__(self, helper_types: Iterable[str] | None = None) -> None:
        """`helper_types`: the kernel helpers this fake kernel has (default: all of the catalog's,
        with the catalog's protocols and IPv6 support; an unknown name gets tcp+udp and IPv6)."""
        specs = {spec.name: spec for spec in KERNEL_HELPERS}
        names = specs if helper_types is None else list(helper_types)
        self._kernel: dict[tuple[str, str], bool] = {}
        for name in names:
            spec = specs.get(name)
            protocols = spec.protocols if spec else frozenset(Protocol)
            for protocol in protocols:
                self._kernel[(name, str(protocol))] = spec.ipv6 if spec else True
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.Lock()
        self.runs: list[FakeRun] = []

    # -- namespaces ----------------------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        with self._lock:
            self._namespaces.setdefault(check_namespace(name), _Namespace())

    def remove_namespace(self, name: str) -> None:
        with self._lock:
            del self._namespaces[name]

    @property
    def namespaces(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._namespaces))

    def tables(self, namespace: str) -> list[tuple[str, str]]:
        with self._lock:
            return sorted(self._namespace(namespace).tables)

    @property
    def writes(self) -> int:
        """Committed transactions that were not dry runs or listings."""
        return sum(1 for r in self.runs if r.ok and not r.json and not r.dry_run)

    # -- NftRunner -----------------------------------------------------------------------

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        check_namespace(namespace)
        with self._lock:
            ok = False
            try:
                output = self._run(namespace, commands, json, dry_run)
                ok = True
                return output
            finally:
                self.runs.append(FakeRun(namespace, commands, json, dry_run, ok))

    def close(self) -> None:
        """Nothing to release."""

    def _namespace(self, namespace: str) -> _Namespace:
        try:
            return self._namespaces[namespace]
        except KeyError:
            raise NamespaceNotFound(namespace) from None

    def _run(self, namespace: str, commands: str, as_json: bool, dry_run: bool) -> str:
        state = self._namespace(namespace)
        lines = [
            (line.strip(), _tokens(line))
            for line in commands.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        if lines and lines[0][1][0] == "list":
            if len(lines) != 1:
                raise FakeUnsupported("the fake lists one thing at a time")
            if not as_json:
                return self._list_text(state, lines[0][0], lines[0][1], namespace)
            return self._list(state, lines[0][0], lines[0][1], namespace)
        work = copy.deepcopy(state)
        for line, tokens in lines:
            try:
                _Command(work, self._kernel, line, tokens).apply()
            except _KernelError as exc:
                raise translate_error(str(exc), namespace=namespace) from exc
        if not dry_run:
            self._namespaces[namespace] = work
        return ""

    def _list_text(self, state: _Namespace, line: str, tokens: list[str], namespace: str) -> str:
        if len(tokens) != 4 or tokens[1] != "table":
            raise FakeUnsupported("the fake lists only one table as text")
        table = state.tables.get((tokens[2], tokens[3]))
        if table is None:
            error = _KernelError(_ENOENT, line)
            raise translate_error(str(error), namespace=namespace) from error
        comment = f'\tcomment "{table.comment}"\n' if table.comment is not None else ""
        return f"table {table.family} {table.name} {{\n{comment}}}\n"

    def _list(self, state: _Namespace, line: str, tokens: list[str], namespace: str) -> str:
        items: list[dict[str, Any]] = [{"metainfo": dict(_METAINFO)}]
        if len(tokens) == 5 and tokens[1] == "set":
            table = state.tables.get((tokens[2], tokens[3]))
            named = table.sets.get(tokens[4]) if table is not None else None
            if table is None or named is None:
                error = _KernelError(_ENOENT, line)
                raise translate_error(str(error), namespace=namespace) from error
            items.append(_set_json(table, named))
            return json.dumps({"nftables": items})
        if tokens[1:] == ["ruleset"]:
            tables = list(state.tables.values())
        elif len(tokens) == 4 and tokens[1] == "table":
            table = state.tables.get((tokens[2], tokens[3]))
            if table is None:
                error = _KernelError(_ENOENT, line)
                raise translate_error(str(error), namespace=namespace) from error
            tables = [table]
        else:
            raise FakeUnsupported(f"cannot list {line!r}")
        for table in sorted(tables, key=lambda t: t.handle):
            items.extend(_table_json(table))
        return json.dumps({"nftables": items})


def _tokens(line: str) -> list[str]:
    if _TOKEN.sub("", line).strip():
        raise FakeUnsupported(f"cannot tokenize {line!r}")
    return _TOKEN.findall(line)


def _table_json(table: _Table) -> Iterator[dict[str, Any]]:
    fam, tname = table.family, table.name
    yield {"table": {"family": fam, "name": tname, "handle": table.handle}}
    for h in table.helpers.values():
        yield {
            "ct helper": {
                "family": fam,
                "name": h.name,
                "table": tname,
                "handle": h.handle,
                "type": h.type,
                "protocol": h.protocol,
                "l3proto": h.l3proto,
            }
        }
    for named in table.sets.values():
        yield _set_json(table, named)
    for chain in table.chains.values():
        body: dict[str, Any] = {
            "family": fam,
            "table": tname,
            "name": chain.name,
            "handle": chain.handle,
        }
        if chain.base is not None:
            body.update(
                type=chain.base.type,
                hook=chain.base.hook,
                prio=chain.base.prio,
                policy=chain.base.policy,
            )
        yield {"chain": body}
    for chain in table.chains.values():
        for rule in chain.rules:
            rule_body: dict[str, Any] = {
                "family": fam,
                "table": tname,
                "chain": chain.name,
                "handle": rule.handle,
            }
            if rule.comment is not None:
                rule_body["comment"] = rule.comment
            rule_body["expr"] = copy.deepcopy(rule.expr)
            yield {"rule": rule_body}


def _set_json(table: _Table, named: _Set) -> dict[str, Any]:
    body: dict[str, Any] = {
        "family": table.family,
        "name": named.name,
        "table": table.name,
        "type": named.type,
        "handle": named.handle,
    }
    if named.elements:
        body["elem"] = sorted(named.elements)
    return {"set": body}


class _Command:
    """One line, parsed and applied to a namespace's working copy."""

    def __init__(
        self, state: _Namespace, kernel: dict[tuple[str, str], bool], line: str, tokens: list[str]
    ) -> None:
        self.state, self.kernel, self.line, self.tokens = state, kernel, line, tokens
        self.pos = 0

    # token helpers
    def unsupported(self) -> FakeUnsupported:
        return FakeUnsupported(f"the fake does not understand {self.line!r}")

    def take(self, *allowed: str) -> str:
        if self.pos >= len(self.tokens):
            raise self.unsupported()
        token = self.tokens[self.pos]
        if allowed and token not in allowed:
            raise self.unsupported()
        self.pos += 1
        return token

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def name(self) -> str:
        token = self.take()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", token):
            raise self.unsupported()
        return token

    def quoted(self) -> str:
        token = self.take()
        if len(token) < 2 or token[0] != '"' or token[-1] != '"':
            raise self.unsupported()
        return token[1:-1]

    def number(self, low: int, high: int) -> int:
        token = self.take()
        if not re.fullmatch(r"-?[0-9]+", token) or not low <= int(token) <= high:
            raise self.unsupported()
        return int(token)

    def end(self) -> None:
        if self.pos != len(self.tokens):
            raise self.unsupported()

    def fail(self, errno_text: str) -> _KernelError:
        return _KernelError(errno_text, self.line)

    # lookups
    def table(self, must_exist: bool = True) -> tuple[tuple[str, str], _Table | None]:
        key = (self.take(*_FAMILIES), self.name())
        table = self.state.tables.get(key)
        if table is None and must_exist:
            raise self.fail(_ENOENT)
        return key, table

    def existing_table(self) -> _Table:
        _, table = self.table()
        assert table is not None
        return table

    # commands
    def apply(self) -> None:
        verb = self.take("add", "create", "delete", "flush")
        what = self.take("table", "ct", "chain", "rule", "set", "element")
        if what == "ct":
            self.take("helper")
            what = "ct helper"
        handler = {
            ("add", "table"): self.add_table,
            ("create", "table"): self.add_table,
            ("delete", "table"): self.delete_table,
            ("flush", "table"): self.flush_table,
            ("add", "ct helper"): self.add_helper,
            ("create", "ct helper"): self.add_helper,
            ("delete", "ct helper"): self.delete_helper,
            ("add", "chain"): self.add_chain,
            ("delete", "chain"): self.delete_chain,
            ("flush", "chain"): self.flush_chain,
            ("add", "rule"): self.add_rule,
            ("add", "set"): self.add_set,
            ("create", "set"): self.add_set,
            ("delete", "set"): self.delete_set,
            ("add", "element"): self.add_element,
            ("create", "element"): self.add_element,
            ("delete", "element"): self.delete_element,
        }.get((verb, what))
        if handler is None:
            raise self.unsupported()
        handler(verb == "create")

    def add_table(self, exclusive: bool) -> None:
        key, table = self.table(must_exist=False)
        comment = None
        if self.peek() == "{":
            self.take()
            self.take("comment")
            comment = self.quoted()
            self.take(";")
            self.take("}")
        self.end()
        if table is not None:
            if exclusive:
                raise self.fail(_EEXIST)
            return  # nft keeps the existing table's comment
        self.state.last_table_handle += 1
        handle = self.state.last_table_handle
        self.state.tables[key] = _Table(key[0], key[1], handle, comment)

    def delete_table(self, _exclusive: bool) -> None:
        key, _table = self.table()
        self.end()
        del self.state.tables[key]

    def flush_table(self, _exclusive: bool) -> None:
        table = self.existing_table()
        self.end()
        for chain in table.chains.values():
            chain.rules.clear()

    def add_helper(self, exclusive: bool) -> None:
        table = self.existing_table()
        name = self.name()
        self.take("{")
        self.take("type")
        helper_type = self.quoted()
        self.take("protocol")
        protocol = self.take("tcp", "udp")
        self.take(";")
        l3proto = "inet"
        if self.peek() == "l3proto":
            self.take()
            l3proto = self.take("ip", "ip6", "inet")
            self.take(";")
        self.take("}")
        self.end()
        if name in table.helpers:
            if exclusive:
                raise self.fail(_EEXIST)
            return  # nft: `add` of an existing object is a no-op, whatever its definition
        ipv6 = self.kernel.get((helper_type, protocol))
        if ipv6 is None or (l3proto == "ip6" and not ipv6):
            raise self.fail(_ENOENT)
        if l3proto == "inet" and not ipv6:
            l3proto = "ip"  # the kernel found only the IPv4 helper, and says so
        table.helpers[name] = _Helper(name, helper_type, protocol, l3proto, table.next_handle())

    def delete_helper(self, _exclusive: bool) -> None:
        table = self.existing_table()
        name = self.name()
        self.end()
        if name not in table.helpers:
            raise self.fail(_ENOENT)
        if any(name in rule.refs for chain in table.chains.values() for rule in chain.rules):
            raise self.fail(_EBUSY)
        del table.helpers[name]

    def port_list(self) -> list[int]:
        """`{ 21, 2121 }`: the elements of a set of ports."""
        self.take("{")
        ports = [self.number(0, 65535)]
        while self.take(",", "}") == ",":
            ports.append(self.number(0, 65535))
        return ports

    def add_set(self, exclusive: bool) -> None:
        table = self.existing_table()
        name = self.name()
        self.take("{")
        self.take("type")
        set_type = self.take("inet_service", "ipv4_addr", "ipv6_addr")
        self.take(";")
        dynamic = self.peek() == "flags"  # only cthm's; nft 1.0.6's JSON does not show it
        if dynamic:
            self.take()
            self.take("dynamic")
            self.take(";")
        ports: list[int] = []
        if self.peek() == "elements":
            self.take()
            self.take("=")
            ports = self.port_list()
            self.take(";")
        self.take("}")
        self.end()
        named = table.sets.get(name)
        if named is not None and (exclusive or named.type != set_type or named.dynamic != dynamic):
            raise self.fail(_EEXIST)  # as the kernel: another type or other flags
        if named is None:
            named = table.sets[name] = _Set(name, set_type, table.next_handle(), dynamic=dynamic)
        if ports and set_type != "inet_service":
            raise self.unsupported()
        named.elements.update(ports)  # `add` of an existing set adds its elements

    def existing_set(self) -> tuple[_Table, _Set]:
        table = self.existing_table()
        named = table.sets.get(self.name())
        if named is None:
            raise self.fail(_ENOENT)
        return table, named

    def delete_set(self, _exclusive: bool) -> None:
        table, named = self.existing_set()
        self.end()
        if any(named.name in r.set_refs for c in table.chains.values() for r in c.rules):
            raise self.fail(_EBUSY)
        del table.sets[named.name]

    def add_element(self, exclusive: bool) -> None:
        _table, named = self.existing_set()
        ports = self.port_list()
        self.end()
        if named.type != "inet_service":
            raise self.unsupported()
        if exclusive and named.elements.intersection(ports):
            raise self.fail(_EEXIST)
        named.elements.update(ports)

    def delete_element(self, _exclusive: bool) -> None:
        _table, named = self.existing_set()
        ports = self.port_list()
        self.end()
        if not named.elements.issuperset(ports):
            raise self.fail(_ENOENT)
        named.elements.difference_update(ports)

    def base_spec(self) -> _BaseSpec:
        self.take("{")
        self.take("type")
        chain_type = self.take("filter", "nat")
        self.take("hook")
        hook = self.take(*_HOOKS)
        self.take("priority")
        token = self.peek()
        prio = _PRIORITIES[self.take()] if token in _PRIORITIES else self.number(-1000, 1000)
        self.take(";")
        policy = "accept"
        if self.peek() == "policy":
            self.take()
            policy = self.take("accept", "drop")
            self.take(";")
        self.take("}")
        return _BaseSpec(chain_type, hook, prio, policy)

    def add_chain(self, _exclusive: bool) -> None:
        table = self.existing_table()
        name = self.name()
        spec = self.base_spec() if self.peek() == "{" else None
        self.end()
        chain = table.chains.get(name)
        if chain is None:
            table.chains[name] = _Chain(name, table.next_handle(), spec)
        elif spec is not None:
            old = chain.base
            if old is None or (old.type, old.hook, old.prio) != (spec.type, spec.hook, spec.prio):
                raise self.fail(_EOPNOTSUPP)
            chain.base = spec  # only the policy can change

    def chain(self) -> tuple[_Table, _Chain]:
        table = self.existing_table()
        chain = table.chains.get(self.name())
        if chain is None:
            raise self.fail(_ENOENT)
        return table, chain

    def delete_chain(self, _exclusive: bool) -> None:
        table, chain = self.chain()
        self.end()
        del table.chains[chain.name]  # this kernel deletes the chain's rules with it

    def flush_chain(self, _exclusive: bool) -> None:
        _, chain = self.chain()
        self.end()
        chain.rules.clear()

    def add_rule(self, _exclusive: bool) -> None:
        table, chain = self.chain()
        expr: list[dict[str, Any]] = []
        refs: set[str] = set()
        set_refs: set[str] = set()
        comment = None
        while (word := self.peek()) is not None:
            if word == "comment":
                self.take()
                comment = self.quoted()
                self.end()
            elif word == "ct":
                expr.append(self.helper_statement(refs))
            elif word in ("tcp", "udp"):
                protocol = self.take()
                self.take("dport")
                right: int | str
                if (self.peek() or "").startswith("@"):
                    right = self.take()
                    set_refs.add(right[1:])
                else:
                    right = self.number(1, 65535)
                left = {"payload": {"protocol": protocol, "field": "dport"}}
                expr.append({"match": {"op": "==", "left": left, "right": right}})
            elif word == "counter":
                self.take()
                expr.append({"counter": {"packets": 0, "bytes": 0}})
            elif word in ("accept", "drop"):
                self.take()
                expr.append({word: None})
            else:
                raise self.unsupported()
        if not expr:
            raise self.unsupported()
        missing = refs - set(table.helpers)
        if missing or set_refs - set(table.sets):
            raise self.fail(_ENOENT)
        if any(table.sets[name].type != "inet_service" for name in set_refs):
            raise self.fail("datatype mismatch, expected internet network service")
        chain.rules.append(
            _Rule(table.next_handle(), expr, frozenset(refs), comment, frozenset(set_refs))
        )

    def helper_statement(self, refs: set[str]) -> dict[str, Any]:
        self.take("ct")
        self.take("helper")
        self.take("set")
        if self.peek() not in ("tcp", "udp"):
            name = self.quoted()
            refs.add(name)
            return {"ct helper": name}
        protocol = self.take()
        self.take("dport")
        self.take("map")
        self.take("{")
        elements: dict[int, str] = {}
        while True:
            port = self.number(1, 65535)
            self.take(":")
            name = self.quoted()
            if port in elements:
                raise self.fail(_EEXIST)
            elements[port] = name
            refs.add(name)
            if self.take(",", "}") == "}":
                break
        key = {"payload": {"protocol": protocol, "field": "dport"}}
        data = {"set": [[port, elements[port]] for port in sorted(elements)]}
        return {"ct helper": {"map": {"key": key, "data": data}}}
