"""Parsing the kernel's state back: `nft -j list table inet cthm` -> KernelTable.

The map rules of chain prerouting read back as ingress assignments, those of chain output as
output assignments. Everything in cthm's table that `render` would not have written (another
chain, a chain with another hook, priority or policy, an empty chain) is described in `garbage`
rather than ignored, so the caller sees the table is not clean and the next apply removes it.
Items of other tables (as in `nft -j list ruleset`) are skipped: they are not ours. The table's
comment `cthm:<deployment id>` is its `owner` (from the JSON where nft shows it, else from the
text listing: `table_comment`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.errors import NftOther
from cthm.netfilter.model import (
    CHAINS,
    CHAINS_BY_NAME,
    TABLE_FAMILY,
    TABLE_NAME,
    HelperObject,
    KernelTable,
    owner_from_comment,
)

_RULE_KEYS = frozenset({"family", "table", "chain", "handle", "expr"})
# "comment": nft from 1.0.7 shows the table's comment (cthm's identity mark) in JSON; 1.0.6 does
# not, and the backend reads it from the text listing (table_comment).
_TABLE_KEYS = frozenset({"family", "name", "handle", "comment"})
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
    table_seen = False
    owner: str | None = None
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
        else:
            garbage.append(f"{kind} {body.get('name', '?')} (cthm renders no {kind})")
    if not table_seen:
        return None

    ruled = {str(rule.get("chain")) for rule in rules}
    for chain in chains:
        garbage.extend(_chain_problems(chain, has_rules=str(chain.get("name")) in ruled))

    keyed: list[tuple[Protocol, int, Direction, Assignment]] = []
    used: set[str] = set()
    mapped: set[tuple[Direction, Protocol]] = set()
    for rule in rules:
        chain_name = rule.get("chain")
        spec = CHAINS_BY_NAME.get(chain_name) if isinstance(chain_name, str) else None
        parsed = _map_rule(rule, helpers) if spec is not None else None
        if spec is None or parsed is None or (spec.direction, parsed[0]) in mapped:
            garbage.append(
                f"rule in chain {rule.get('chain')} that cthm did not render: {_summary(rule)}"
            )
            continue
        protocol, entries = parsed
        direction = spec.direction
        mapped.add((direction, protocol))
        for port, name in entries:
            used.add(name)
            keyed.append(
                (
                    protocol,
                    port,
                    direction,
                    Assignment(protocol, port, helpers[name].type, direction),
                )
            )

    for name in sorted(set(helpers) - used):
        garbage.append(f"ct helper {name} is not used by any cthm rule")
    for helper in sorted(helpers.values()):
        expected = f"{helper.type}-{helper.protocol}"
        if helper.name != expected:
            garbage.append(f"ct helper {helper.name} should be named {expected} (its content)")
    # As `render` orders them; (protocol, port, direction) is unique within a chain's map, and
    # a duplicate across two rules was refused above, so the sort never compares Assignments.
    keyed.sort()
    return KernelTable(
        assignments=tuple(item[3] for item in keyed),
        helpers=frozenset(helpers.values()),
        garbage=tuple(garbage),
        owner=owner,
    )


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
