"""Parsing the kernel's state back: `nft -j list table inet cthm` -> KernelTable.

Everything in cthm's table that `render` would not have written is described in `garbage`
rather than ignored, so the caller sees the table is not clean and the next apply removes it.
Items of other tables (as in `nft -j list ruleset`) are skipped: they are not ours.
"""

from __future__ import annotations

import json
from typing import Any

from cthm.domain import Assignment, Protocol
from cthm.netfilter.errors import NftOther
from cthm.netfilter.model import (
    CHAIN_HOOK,
    CHAIN_NAME,
    CHAIN_POLICY,
    CHAIN_PRIORITY,
    CHAIN_TYPE,
    TABLE_FAMILY,
    TABLE_NAME,
    HelperObject,
    KernelTable,
)

_RULE_KEYS = frozenset({"family", "table", "chain", "handle", "expr"})
_TABLE_KEYS = frozenset({"family", "name", "handle"})


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
    table_seen = False
    garbage: list[str] = []
    helpers: dict[str, HelperObject] = {}
    chains: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for item in items:
        ((kind, body),) = item.items()
        if kind == "metainfo":
            continue
        if kind == "table":
            if _ours(body):
                table_seen = True
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
        else:
            garbage.append(f"{kind} {body.get('name', '?')} (cthm renders no {kind})")
    if not table_seen:
        return None

    for chain in chains:
        garbage.extend(_chain_problems(chain))

    assignments: list[Assignment] = []
    used: set[str] = set()
    mapped: set[Protocol] = set()
    for rule in rules:
        parsed = _map_rule(rule, helpers) if rule.get("chain") == CHAIN_NAME else None
        if parsed is None or parsed[0] in mapped:
            garbage.append(
                f"rule in chain {rule.get('chain')} that cthm did not render: {_summary(rule)}"
            )
            continue
        protocol, entries = parsed
        mapped.add(protocol)
        for port, name in entries:
            used.add(name)
            assignments.append(Assignment(protocol, port, helpers[name].type))

    for name in sorted(set(helpers) - used):
        garbage.append(f"ct helper {name} is not used by any cthm rule")
    for helper in sorted(helpers.values()):
        expected = f"{helper.type}-{helper.protocol}"
        if helper.name != expected:
            garbage.append(f"ct helper {helper.name} should be named {expected} (its content)")
    assignments.sort(key=lambda a: (a.protocol, a.port))
    return KernelTable(
        assignments=tuple(assignments),
        helpers=frozenset(helpers.values()),
        garbage=tuple(garbage),
    )


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


def _chain_problems(chain: dict[str, Any]) -> list[str]:
    name = chain.get("name")
    if name != CHAIN_NAME:
        return [f"chain {name} (cthm renders only chain {CHAIN_NAME})"]
    actual = {k: chain.get(k) for k in ("type", "hook", "prio", "policy")}
    expected: dict[str, object] = {
        "type": CHAIN_TYPE,
        "hook": CHAIN_HOOK,
        "prio": CHAIN_PRIORITY,
        "policy": CHAIN_POLICY,
    }
    if actual == expected:
        return []
    shown = " ".join(f"{k} {v}" for k, v in actual.items())
    wanted = " ".join(f"{k} {v}" for k, v in expected.items())
    return [f"chain {CHAIN_NAME} is {shown}; cthm renders {wanted}"]


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
