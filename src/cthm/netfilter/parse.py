"""Parsing the kernel's state back: `nft -j list table inet cthm` -> KernelTable, and
`nft -j list set inet cthm NAME` -> that set's ports (the read-back of a partial sync).

The set rules of chain prerouting (`tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"`) read
back as ingress assignments, one per element of the set, those of chain output as output
assignments. Everything in cthm's table that `render` would not have written (another chain, a
chain with another hook, priority or policy, an empty chain, an extra rule, a set no rule uses,
an empty set or one of another type, a rule naming a missing set or a set of another helper) is
described in `garbage` rather than ignored, so the caller sees the table is not clean and the
next apply removes it. A map rule of the previous layout reads back as its assignments plus
PREVIOUS_LAYOUT in `garbage`, so the next full apply migrates the table.
Items of other tables (as in `nft -j list ruleset`) are skipped: they are not ours. The table's
comment `cthm:<deployment id>` is its `owner` (from the JSON where nft shows it, else from the
text listing: `table_comment`).
"""

from __future__ import annotations

import json
import re
from itertools import repeat
from typing import Any

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import NftOther
from cthm.netfilter.model import (
    CHAINS,
    CHAINS_BY_NAME,
    PREVIOUS_LAYOUT,
    SET_TYPE,
    TABLE_FAMILY,
    TABLE_NAME,
    HelperObject,
    KernelTable,
    owner_from_comment,
    set_name,
    shared_assignment,
    shared_assignments,
    shared_helper,
)

_RULE_KEYS = frozenset({"family", "table", "chain", "handle", "expr"})
# "comment": nft from 1.0.7 shows the table's comment (cthm's identity mark) in JSON; 1.0.6 does
# not, and the backend reads it from the text listing (table_comment).
_TABLE_KEYS = frozenset({"family", "name", "handle", "comment"})
# A set as cthm writes it: no flags, timeout, size, policy or comment.
_SET_KEYS = frozenset({"family", "name", "table", "type", "handle", "elem"})
_TEXT_COMMENT = re.compile(
    rf'^table {TABLE_FAMILY} {TABLE_NAME} \{{\n[ \t]*comment "([^"\n]*)"$', re.MULTILINE
)


class _Unexpected(Exception):
    pass


def _loads(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
        items = data["nftables"]
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and len(item) == 1 for item in items
        ):
            raise _Unexpected("items are not one-key objects")
    except (ValueError, KeyError, TypeError, _Unexpected) as exc:
        raise NftOther(f"unexpected JSON from nft: {exc}; starts {text[:120]!r}") from exc
    return items


def _ours(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and body.get("family") == TABLE_FAMILY
        and body.get("table", body.get("name")) == TABLE_NAME
    )


def parse_table(nft_json_text: str) -> KernelTable | None:
    """cthm's table from nft's JSON listing; None when the listing holds no such table."""
    items = _loads(nft_json_text)
    # Every full sync reads back a table render wrote: checked as a whole against what render
    # writes (a few dict comparisons an item); anything else is described by the general walk.
    clean = _as_rendered(items)
    return clean if clean is not None else _parse_items(items)


def _parse_items(items: list[dict[str, Any]]) -> KernelTable | None:
    table_seen = False
    owner: str | None = None
    garbage: list[str] = []
    helpers: dict[str, HelperObject] = {}
    chains: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    sets: dict[str, dict[str, Any]] = {}
    for item in items:
        ((kind, body),) = item.items()
        if kind == "metainfo":
            continue
        if kind == "table":
            if _ours(body):
                table_seen = True
                owner = owner_from_comment(body.get("comment"))
                extra = sorted(set(body) - _TABLE_KEYS)
                if extra:
                    garbage.append(f"table has attributes cthm does not set: {', '.join(extra)}")
            continue
        if not _ours(body):
            continue
        if kind == "ct helper":
            helper = _helper(body)
            if helper is None:
                garbage.append(f"unreadable ct helper object {_describe(body)}")
            else:
                helpers[helper.name] = helper
        elif kind == "chain":
            chains.append(body)
        elif kind == "rule":
            rules.append(body)
        elif kind == "set" and isinstance(body.get("name"), str):
            sets[body["name"]] = body
        else:
            garbage.append(f"{kind} {body.get('name', '?')} (cthm renders no {kind})")
    if not table_seen:
        return None

    ruled = {str(rule.get("chain")) for rule in rules}
    for chain in chains:
        garbage.extend(_chain_problems(chain, has_rules=str(chain.get("name")) in ruled))

    ports_of: dict[str, tuple[int, ...]] = {}
    for name, body in sorted(sets.items()):
        ports, problem = _set_ports(body)
        if problem is None:
            ports_of[name] = ports
        else:
            garbage.append(problem)

    keyed: list[tuple[Protocol, int, Direction, Assignment]] = []
    seen: set[tuple[Protocol, int, Direction]] = set()
    used: set[str] = set()
    used_sets: set[str] = set()
    mapped: set[tuple[Direction, Protocol]] = set()
    previous_layout = False
    for rule in rules:
        chain_name = rule.get("chain")
        spec = CHAINS_BY_NAME.get(chain_name) if isinstance(chain_name, str) else None
        entries: list[tuple[int, str]] | None = None
        if spec is not None:
            direction = spec.direction
            by_set = _set_rule(rule, helpers, direction)
            if by_set is not None and by_set[1] in ports_of and by_set[1] not in used_sets:
                protocol, name_of_set, helper_name = by_set
                used_sets.add(name_of_set)
                entries = [(port, helper_name) for port in ports_of[name_of_set]]
            else:
                by_map = _map_rule(rule, helpers)
                if by_map is not None and (direction, by_map[0]) not in mapped:
                    protocol, entries = by_map
                    mapped.add((direction, protocol))
                    previous_layout = True
        if spec is None or entries is None:
            garbage.append(
                f"rule in chain {rule.get('chain')} that cthm did not render: {_summary(rule)}"
            )
            continue
        for port, name in entries:
            used.add(name)
            key = (protocol, port, direction)
            if key in seen:
                # Two rules give this port a helper: not a table cthm renders.
                garbage.append(f"{direction} {protocol} port {port} is in two helper rules")
                continue
            seen.add(key)
            # Shared (model.shared_assignment): 0.55 of the 1.07 ms a 1000-port table took.
            keyed.append((*key, shared_assignment(protocol, port, helpers[name].type, direction)))
    if previous_layout:
        garbage.append(PREVIOUS_LAYOUT)
    for name in sorted(set(ports_of) - used_sets):
        garbage.append(f"set {name} is not used by any cthm rule")

    for name in sorted(set(helpers) - used):
        garbage.append(f"ct helper {name} is not used by any cthm rule")
    for helper in sorted(helpers.values()):
        expected = f"{helper.type}-{helper.protocol}"
        if helper.name != expected:
            garbage.append(f"ct helper {helper.name} should be named {expected} (its content)")
    # As `render` orders them; (protocol, port, direction) is unique (`seen`), so the sort
    # never compares Assignments.
    keyed.sort()
    return KernelTable(
        assignments=tuple(item[3] for item in keyed),
        helpers=frozenset(helpers.values()),
        garbage=tuple(garbage),
        owner=owner,
    )


_HELPER_KEYS = frozenset({"family", "name", "table", "handle", "type", "protocol", "l3proto"})
_CHAIN_KEYS = frozenset({"family", "table", "name", "handle", "type", "hook", "prio", "policy"})
_PROTOCOLS = {protocol.value: protocol for protocol in Protocol}
# A base chain as render writes it, but its handle.
_RENDERED_CHAINS = {
    spec.name: {
        "family": TABLE_FAMILY,
        "table": TABLE_NAME,
        "name": spec.name,
        "type": spec.type,
        "hook": spec.hook,
        "prio": spec.priority,
        "policy": spec.policy,
    }
    for spec in CHAINS.values()
}
# A chain's sets are named for its direction: set_name(direction, helper object name).
_SET_PREFIXES = {spec.name: set_name(spec.direction, "") for spec in CHAINS.values()}
# A set rule's statements as nft lists what render writes, per (protocol, set, helper object);
# a handful in any deployment, bounded anyway.
_RULE_EXPRS: dict[tuple[str, str, str], list[dict[str, Any]]] = {}


def _rule_expr(protocol: str, set_name: str, helper_name: str) -> list[dict[str, Any]]:
    key = (protocol, set_name, helper_name)
    expr = _RULE_EXPRS.get(key)
    if expr is None:
        if len(_RULE_EXPRS) >= 4096:
            _RULE_EXPRS.clear()
        left = {"payload": {"protocol": protocol, "field": "dport"}}
        match = {"match": {"op": "==", "left": left, "right": f"@{set_name}"}}
        expr = _RULE_EXPRS.setdefault(key, [match, {"ct helper": helper_name}])
    return expr


def _as_rendered(items: list[dict[str, Any]]) -> KernelTable | None:
    """The table when the listing is exactly one `render` writes (only cthm's table, each item
    with exactly render's attributes, every helper object, set and chain used); None for
    anything else, which the general walk (_parse_items) then reads. Both give the same table
    for such a listing (tests/netfilter/test_nft_parse.py holds them equal)."""
    table_seen = False
    owner: str | None = None
    helpers: dict[str, HelperObject] = {}
    sets: dict[str, Any] = {}
    chains: set[str] = set()
    rules: list[dict[str, Any]] = []
    for item in items:
        ((kind, body),) = item.items()
        if type(body) is not dict:
            return None
        if (kind != "table" and kind != "metainfo") and (
            body.get("family") != TABLE_FAMILY or body.get("table") != TABLE_NAME
        ):
            return None  # (_ours, inline: a read-back's every item)
        if kind == "set":
            name, elements = body.get("name"), body.get("elem")
            if body.keys() != _SET_KEYS or body["type"] != SET_TYPE or type(name) is not str:
                return None
            if type(elements) is not list or not elements or name in sets:
                return None
            sets[name] = elements
        elif kind == "rule":
            if body.keys() != _RULE_KEYS:
                return None
            rules.append(body)
        elif kind == "ct helper":
            if body.keys() != _HELPER_KEYS:
                return None
            name, helper_type = body["name"], body["type"]
            protocol_name, l3proto = body["protocol"], body["l3proto"]
            if type(name) is not str or type(helper_type) is not str or type(l3proto) is not str:
                return None
            protocol = _PROTOCOLS.get(protocol_name) if type(protocol_name) is str else None
            if protocol is None or name in helpers or name != f"{helper_type}-{protocol_name}":
                return None
            helpers[name] = shared_helper(name, helper_type, protocol, l3proto)
        elif kind == "chain":
            name = body.get("name")
            expected = _RENDERED_CHAINS.get(name) if type(name) is str else None
            if expected is None or name in chains or body.keys() != _CHAIN_KEYS:
                return None
            if body != {**expected, "handle": body["handle"]}:
                return None
            chains.add(str(name))
        elif kind == "table":
            if table_seen or not _ours(body) or not body.keys() <= _TABLE_KEYS:
                return None
            table_seen = True
            owner = owner_from_comment(body.get("comment"))
        elif kind != "metainfo":
            return None
    if not table_seen:
        return None
    keyed: list[tuple[Protocol, int, Direction, Assignment]] = []
    ruled: set[str] = set()
    used_sets: set[str] = set()
    used_helpers: set[str] = set()
    # (direction, protocol) -> its sets' ports: two sets of one may not share a port.
    groups: dict[tuple[Direction, Protocol], list[int]] = {}
    for body in rules:
        chain, expr = body["chain"], body["expr"]
        spec = CHAINS_BY_NAME.get(chain) if type(chain) is str else None
        if spec is None or chain not in chains or type(expr) is not list or len(expr) != 2:
            return None
        first, second = expr
        match = first.get("match") if type(first) is dict else None
        right = match.get("right") if type(match) is dict else None
        helper_name = second.get("ct helper") if type(second) is dict else None
        if type(right) is not str or type(helper_name) is not str:
            return None
        helper = helpers.get(helper_name)
        name = right[1:]
        if helper is None or name in used_sets or name != _SET_PREFIXES[chain] + helper_name:
            return None
        ports = sets.get(name)
        protocol_name = helper_name[len(helper.type) + 1 :]  # (the name is type-protocol)
        if ports is None or expr != _rule_expr(protocol_name, name, helper_name):
            return None
        # As _set_ports: only ints (no bool), within 1-65535, each once.
        if set(map(type, ports)) != {int} or min(ports) < 1 or max(ports) > 65535:
            return None
        if len(set(ports)) != len(ports):
            return None
        used_sets.add(name)
        used_helpers.add(helper_name)
        ruled.add(chain)
        direction, protocol, helper_type = spec.direction, helper.protocol, helper.type
        groups.setdefault((direction, protocol), []).extend(ports)
        keyed.extend(
            zip(
                repeat(protocol),
                ports,
                repeat(direction),
                shared_assignments(protocol, ports, helper_type, direction),
                strict=False,
            )
        )
    if len(used_sets) != len(sets) or len(used_helpers) != len(helpers) or ruled != chains:
        return None
    if len(groups) != len(used_sets) and any(len(set(p)) != len(p) for p in groups.values()):
        return None  # a port in two sets of one direction and protocol
    # As render orders them; (protocol, port, direction) is unique, so the sort never compares
    # Assignments.
    keyed.sort()
    return KernelTable(
        assignments=tuple(item[3] for item in keyed),
        helpers=frozenset(helpers.values()),
        garbage=(),
        owner=owner,
    )


def parse_set(nft_json_text: str, name: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The ports of cthm's set `name` from `nft -j list set inet cthm NAME`, sorted, and what
    in it cthm would not have written (garbage; then the ports are those that read cleanly)."""
    for item in _loads(nft_json_text):
        ((kind, body),) = item.items()
        if kind == "set" and _ours(body) and body.get("name") == name:
            ports, problem = _set_ports(body)
            if problem is None:
                return ports, ()
            elements = body.get("elem")
            clean = sorted(
                {p for p in elements if _is_port(p)} if isinstance(elements, list) else set()
            )
            return tuple(clean), (problem,)
    raise NftOther(f"set {name} missing from nft's listing of it: {nft_json_text[:120]!r}")


def _is_port(value: object) -> bool:
    return type(value) is int and 1 <= value <= 65535


def _set_ports(body: dict[str, Any]) -> tuple[tuple[int, ...], str | None]:
    """A set's ports, sorted, or a description of why it is not a set cthm writes."""
    name = body.get("name")
    extra = sorted(set(body) - _SET_KEYS)
    if extra:
        return (), f"set {name} has attributes cthm does not set: {', '.join(extra)}"
    if body.get("type") != SET_TYPE:
        return (), f"set {name} is of type {_compact(body.get('type'))}, not {SET_TYPE}"
    elements = body.get("elem")
    if not elements:
        return (), f"set {name} is empty (cthm renders no empty set)"
    # C-level checks (a read-back of a thousand ports is on every partial sync's path): only
    # ints (type is exact: no bool), all within 1-65535.
    if (
        not isinstance(elements, list)
        or set(map(type, elements)) != {int}
        or min(elements) < 1
        or max(elements) > 65535
    ):
        return (), f"set {name} holds elements cthm does not write: {_compact(elements)}"
    ports = tuple(sorted(set(elements)))
    if len(ports) != len(elements):
        return (), f"set {name} lists an element twice"
    return ports, None


def table_comment(nft_text: str) -> str | None:
    """The comment of cthm's table from nft's text listing (`list table inet cthm`), where nft
    1.0.6 shows it (its JSON does not); None when the table has none."""
    match = _TEXT_COMMENT.search(nft_text)
    return match.group(1) if match else None


def _helper(body: dict[str, Any]) -> HelperObject | None:
    values = [body.get(k) for k in ("name", "type", "protocol", "l3proto")]
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) != len(values):
        return None
    name, kind, protocol, l3proto = strings
    try:
        return HelperObject(name, kind, Protocol(protocol), l3proto)
    except ValueError:
        return None


_OUR_CHAINS = " and ".join(spec.name for spec in CHAINS.values())


def _chain_problems(chain: dict[str, Any], *, has_rules: bool) -> list[str]:
    name = chain.get("name")
    spec = CHAINS_BY_NAME.get(name) if isinstance(name, str) else None
    if spec is None:
        return [f"chain {name} (cthm renders only chains {_OUR_CHAINS})"]
    actual = {k: chain.get(k) for k in ("type", "hook", "prio", "policy")}
    expected: dict[str, object] = {
        "type": spec.type,
        "hook": spec.hook,
        "prio": spec.priority,
        "policy": spec.policy,
    }
    problems = []
    if actual != expected:
        shown = " ".join(f"{k} {v}" for k, v in actual.items())
        wanted = " ".join(f"{k} {v}" for k, v in expected.items())
        problems.append(f"chain {spec.name} is {shown}; cthm renders {wanted}")
    if not has_rules:
        # render writes a chain only for a direction with assignments.
        problems.append(f"chain {spec.name} is empty (cthm renders no empty chain)")
    return problems


def _set_rule(
    rule: dict[str, Any], helpers: dict[str, HelperObject], direction: Direction
) -> tuple[Protocol, str, str] | None:
    """(protocol, set name, helper object name) when the rule is exactly a set rule `render`
    writes for `direction`: the set named for that direction and helper, the helper's
    protocol."""
    if set(rule) != _RULE_KEYS:
        return None
    try:
        match, statement = rule["expr"]
        helper_name = statement["ct helper"]
        body = match["match"]
        if set(match) != {"match"} or set(statement) != {"ct helper"}:
            return None
        if set(body) != {"op", "left", "right"} or body["op"] != "==":
            return None
        payload = body["left"]["payload"]
        if set(body["left"]) != {"payload"} or set(payload) != {"protocol", "field"}:
            return None
        if payload["field"] != "dport":
            return None
        protocol = Protocol(payload["protocol"])
        right = body["right"]
        helper = helpers.get(helper_name) if isinstance(helper_name, str) else None
        if helper is None or helper.protocol != protocol or not isinstance(right, str):
            return None
        if right != "@" + set_name(direction, helper.name):
            return None  # a set of another direction or helper
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return protocol, right[1:], helper.name


def _map_rule(
    rule: dict[str, Any], helpers: dict[str, HelperObject]
) -> tuple[Protocol, list[tuple[int, str]]] | None:
    """(protocol, [(port, object name)]) when the rule is exactly a map rule `render` writes."""
    if set(rule) != _RULE_KEYS:
        return None
    try:
        (statement,) = rule["expr"]
        mapping = statement["ct helper"]["map"]
        if set(mapping) != {"key", "data"}:
            return None
        payload = mapping["key"]["payload"]
        if set(mapping["key"]) != {"payload"} or payload.get("field") != "dport":
            return None
        if set(payload) != {"protocol", "field"}:
            return None
        protocol = Protocol(payload["protocol"])
        elements = mapping["data"]["set"]
        entries: list[tuple[int, str]] = []
        for port, name in elements:
            if isinstance(port, bool) or not isinstance(port, int) or not isinstance(name, str):
                return None
            helper = helpers.get(name)
            if helper is None or helper.protocol != protocol:
                return None
            entries.append((port, name))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not entries or len({port for port, _ in entries}) != len(entries):
        return None
    return protocol, entries


def _summary(rule: dict[str, Any]) -> str:
    """A short description of a rule's statements, for people; never the rule's handle (it
    differs between kernels and fakes) and never counter values (they change with traffic)."""
    expr = rule.get("expr")
    if not isinstance(expr, list):
        return "unreadable rule"
    parts = [_statement(stmt) for stmt in expr]
    if "comment" in rule:
        parts.append(f"comment {json.dumps(rule['comment'])}")
    return ", ".join(parts) or "empty rule"


def _statement(stmt: Any) -> str:
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return "unreadable statement"
    ((key, value),) = stmt.items()
    kind = str(key)
    if kind == "match" and isinstance(value, dict):
        left = value.get("left")
        if isinstance(left, dict) and isinstance(left.get("payload"), dict):
            payload = left["payload"]
            target = f"{payload.get('protocol')} {payload.get('field')}"
        else:
            target = _compact(left)
        return f"{target} {value.get('op')} {_compact(value.get('right'))}"
    if kind == "ct helper":
        return f"ct helper set {_helper_map(value) or _compact(value)}"
    if value is None or kind == "counter":
        return kind
    return f"{kind} {_compact(value)}"


def _helper_map(value: Any, shown: int = 8) -> str | None:
    """`tcp dport map { 21 : ftp-tcp, ... }` for a helper map statement; None if not one."""
    try:
        payload = value["map"]["key"]["payload"]
        elements = value["map"]["data"]["set"]
        pairs = [f"{_compact(k)} : {_compact(v)}" for k, v in elements[:shown]]
    except (KeyError, TypeError, ValueError):
        return None
    more = ", ..." if len(elements) > shown else ""
    key = f"{payload.get('protocol')} {payload.get('field')}"
    return f"{key} map {{ {', '.join(pairs)}{more} }}"


def _compact(value: Any, limit: int = 80) -> str:
    text: str = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(body: dict[str, Any]) -> str:
    return _compact({k: v for k, v in body.items() if k != "handle"})
