"""Parsing `iptables-save -t raw` output: only cthm's chains and the rules that jump to them.

Everything else (other chains, Neutron's `neutron-l3-agent-*`, other tables) is skipped unread.
A rule in our chains that cthm would not write, a second rule for a (protocol, port) in one chain
(the first CT target wins in the kernel), an odd or extra jump, an empty chain that only exists
while its direction is in use, an identity marker anywhere but first: each becomes a `garbage`
description of that chain. A chain's first rule `-m comment --comment "cthm:<id>"` is its owner.
"""

from __future__ import annotations

import itertools
import re

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter.iptables_model import (
    CHAIN_BY_NAME,
    CHAINS,
    TABLE,
    IptablesChain,
    SavedChain,
    SavedTable,
)
from cthm.netfilter.iptables_save import save_lines
from cthm.netfilter.model import OWNER_PREFIX, owner_from_comment

_RULES = {
    chain.name: re.compile(
        rf"-A {re.escape(chain.name)} -p (tcp|udp) -m \1 --dport ([1-9][0-9]{{0,4}}) "
        r"-j CT --helper ([A-Za-z0-9][A-Za-z0-9._-]{0,14})"
    )
    for chain in CHAINS
}
_MARKERS = {
    chain.name: re.compile(
        rf'-A {re.escape(chain.name)} -m comment --comment "{re.escape(OWNER_PREFIX)}([^"]*)"'
    )
    for chain in CHAINS
}
_PROTOCOLS = {protocol.value: protocol for protocol in Protocol}  # cheaper than Protocol(x)
_JUMPS = frozenset(("-j", "-g", "--jump", "--goto"))
_LIMIT = 20  # garbage descriptions kept per chain; a broken chain need not be listed whole


def _our_target(words: list[str]) -> str | None:
    """The chain of ours a rule jumps or goes to, if any."""
    for word, following in itertools.pairwise(words):
        if word in _JUMPS and following in CHAIN_BY_NAME:
            return following
    return None


def parse_save(text: str) -> SavedTable:
    present: set[str] = set()
    jumps: dict[str, list[str]] = {chain.name: [] for chain in CHAINS}
    # Per chain, keyed by (protocol, port): a second rule for one is shadowed.
    found: dict[str, dict[tuple[Protocol, int], Assignment]] = {c.name: {} for c in CHAINS}
    garbage: dict[str, list[str]] = {chain.name: [] for chain in CHAINS}
    ruled: set[str] = set()
    owners: dict[str, str] = {}
    seen: set[str] = set()  # chains with a rule (marker or not) read so far
    for _, name, line, words in save_lines(text, table=TABLE):
        if words is None:
            if name in CHAIN_BY_NAME:
                present.add(name)
            continue
        chain = CHAIN_BY_NAME.get(name)
        if chain is not None:
            first = chain.name not in seen
            seen.add(chain.name)
            marker = _MARKERS[chain.name].fullmatch(line)
            if marker is None:
                ruled.add(chain.name)
                _parse_rule(line, chain, found[chain.name], garbage[chain.name])
            elif first and owner_from_comment(OWNER_PREFIX + marker.group(1)) is not None:
                owners[chain.name] = marker.group(1)
            else:
                garbage[chain.name].append(f"identity marker not first or malformed: {line}")
        else:
            target = _our_target(words)
            if target is not None:
                jumps[target].append(line[3:])
    chains = tuple(
        _saved_chain(
            chain,
            chain.name in present,
            chain.name in ruled,
            found[chain.name],
            jumps[chain.name],
            garbage[chain.name],
            owners.get(chain.name),
        )
        for chain in CHAINS
    )
    held = [saved.assignments for saved in chains if saved.assignments]
    if len(held) > 1:
        ordered = tuple(sorted((a for one in held for a in one), key=_order))
    else:
        ordered = held[0] if held else ()  # one direction: already in order
    return SavedTable(chains, ordered, tuple(g for saved in chains for g in saved.garbage))


def _order(assignment: Assignment) -> tuple[Protocol, int, Direction]:
    """`desired_table`'s order."""
    return (assignment.protocol, assignment.port, assignment.direction)


def _saved_chain(
    chain: IptablesChain,
    present: bool,
    has_rules: bool,
    found: dict[tuple[Protocol, int], Assignment],
    jumps: list[str],
    garbage: list[str],
    owner: str | None,
) -> SavedChain:
    canonical = jumps.count(chain.jump)
    for spec in jumps:
        if spec != chain.jump:
            garbage.append(f"foreign jump to {chain.name}: {spec}")
    if canonical > 1:
        garbage.append(f"{canonical} jumps `{chain.jump}` instead of one")
    if present and canonical == 0:
        garbage.append(f"jump `{chain.jump}` missing")
    if not present and jumps:
        garbage.append(f"chain {chain.name} missing")  # cannot happen in a consistent kernel
    if present and not has_rules and not chain.anchor:
        garbage.append(f"chain {chain.name} is empty (cthm removes a direction's chain with it)")
    if len(garbage) > _LIMIT:
        garbage[_LIMIT:] = [f"... and {len(garbage) - _LIMIT} more"]
    mine = tuple(found[key] for key in sorted(found))
    return SavedChain(chain, present, mine, tuple(jumps), tuple(garbage), owner)


def _parse_rule(
    line: str,
    chain: IptablesChain,
    found: dict[tuple[Protocol, int], Assignment],
    garbage: list[str],
) -> None:
    match = _RULES[chain.name].fullmatch(line)
    port = int(match.group(2)) if match else 0
    if match is None or port > 65535:
        garbage.append(f"unexpected rule: {line}")
        return
    protocol = _PROTOCOLS[match.group(1)]
    key = (protocol, port)
    if key in found:
        garbage.append(f"shadowed rule (an earlier one wins): {line}")
        return
    found[key] = Assignment(protocol, port, match.group(3), chain.direction)
