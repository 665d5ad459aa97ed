"""Other software's `-j CT` rules in the raw table, and which of cthm's assignments they shadow.

A connection gets one helper: the first assignment that runs wins (pinned with traffic by
tests/traffic/test_helper_precedence.py). iptables `-j CT` rules run in raw, before conntrack
lookup, so:
- nftables backend (cthm's chain runs after conntrack lookup): any foreign `-j CT --helper` rule
  matching the port, reached from the direction's built-in chain, wins, whatever the order; a
  `-j CT` without `--helper` leaves cthm's assignment alone.
- iptables backend: only rules reached before cthm's jump in that built-in chain count, and
  then any of them wins, a template without `--helper` leaving the connection no helper at all.

Pure: `parse_foreign` reads the text of one family's `iptables-save -t raw`; `shadowed` applies
the rules above. Walking the chains: from PREROUTING (ingress) and OUTPUT (output), each rule in
order, descending into user chains it jumps or goes to (Neutron's layout is one level deep;
deeper nesting is followed too, each chain once per path, up to MAX_DEPTH). Best effort: matches
other than protocol and destination port (-s, -d, -i, negations, ...) are not evaluated; such a
rule "may match" and says which conditions it has. Verdicts that end a chain early (ACCEPT,
DROP, RETURN, and a goto, whose chain's end returns past this one) are followed where their
match is only protocol and port: a rule after one is not reached by the connections it matches.
One with other conditions may or may not end the chain, so later rules are still taken as
reached; and an ACCEPT or DROP inside a user chain is not carried out to the chains that called
it (their later rules are taken as reached: a warning too many rather than one too few).

`RawTable` is one family's raw table of one iptables flavour (raw_tables.read_raw_tables reads
them); `find_shadows` judges each by the precedence of the backend it holds cthm's chains for.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from cthm.domain import Assignment, Direction
from cthm.netfilter.iptables_model import CHAIN_BY_DIRECTION, CHAIN_BY_NAME, TABLE
from cthm.netfilter.iptables_parse import parse_save
from cthm.netfilter.iptables_save import save_lines

Backend = Literal["nftables", "iptables"]
MAX_DEPTH = 4
_JUMPS = frozenset(("-j", "-g", "--jump", "--goto"))
_GOTOS = frozenset(("-g", "--goto"))
# Verdicts after which the rest of the chain is not run for the packets the rule matches.
_ENDS_CHAIN = frozenset(("ACCEPT", "DROP", "RETURN"))
_HOOKS = {chain.hook: chain.direction for chain in CHAIN_BY_DIRECTION.values()}
# Options that only load a module or annotate: never a condition on the packet.
_NEUTRAL = frozenset(("-m", "--match"))
_NEUTRAL_MODULES = frozenset(("tcp", "udp", "comment", "multiport"))
_PORT_OPTIONS = frozenset(("--dport", "--destination-port", "--dports", "--destination-ports"))
PortRange = tuple[int, int]
# Protocol (None: any) and ports (None: any) of a rule that ends the chain before another.
Filter = tuple[str | None, tuple[PortRange, ...] | None]


@dataclass(frozen=True, slots=True)
class ForeignRule:
    """One `-j CT` rule outside cthm's chains, reached from a built-in chain.

    protocol: None matches every protocol; ports: None matches every port, else inclusive ranges.
    conditions: the other matches on the rule and on the jumps leading to it, which this module
    does not evaluate (the rule may or may not match a given connection). before_cthm: reached
    before cthm's jump in the built-in chain (always True when that chain has no jump of cthm's).
    unreached_for: the protocol and ports of earlier rules on its path that end the chain
    (ACCEPT, DROP, RETURN, goto): connections they match never reach this rule.
    """

    text: str
    chain: str
    hook: str
    direction: Direction
    protocol: str | None
    ports: tuple[PortRange, ...] | None
    helper: str | None
    before_cthm: bool
    conditions: tuple[str, ...] = ()
    unreached_for: tuple[Filter, ...] = ()

    @property
    def where(self) -> str:
        """Where it runs, for a person: `raw PREROUTING` (the text names its own chain)."""
        return f"{TABLE} {self.hook}"

    def matches(self, assignment: Assignment) -> bool:
        """Whether the rule can apply to the assignment's connections (direction, protocol,
        port); `conditions` are not evaluated."""
        if assignment.direction is not self.direction:
            return False
        if not _covers(self.protocol, self.ports, assignment):
            return False
        return not any(_covers(p, ports, assignment) for p, ports in self.unreached_for)


@dataclass(frozen=True, slots=True)
class Shadow:
    """An assignment of cthm's that a foreign rule overrides; effect: `helper X wins` or
    `no helper at all`."""

    assignment: Assignment
    rule: ForeignRule
    effect: str
    families: tuple[str, ...] = ()  # "IPv4", "IPv6": the raw tables it was found in

    @property
    def rule_text(self) -> str:
        return self.rule.text


@dataclass(frozen=True, slots=True)
class RawTable:
    """One family's raw table as one iptables flavour shows it. holds_cthm: cthm's chains are
    in it, so it is judged by the iptables backend's precedence (else by nftables': only a rule
    that sets a helper wins; this is also how another flavour's rules are judged beside cthm's
    iptables chains, their relative order being unknown)."""

    family: str
    flavour: str
    rules: tuple[ForeignRule, ...]
    holds_cthm: bool

    @classmethod
    def parse(cls, family: str, flavour: str, text: str) -> RawTable:
        """From that family's `iptables-save -t raw` text."""
        return cls(family, flavour, parse_foreign(text), not parse_save(text).empty)


@dataclass(frozen=True, slots=True)
class _Match:
    """What a rule (or a path of jumps) matches; None: anything."""

    protocol: str | None = None
    ports: tuple[PortRange, ...] | None = None
    conditions: tuple[str, ...] = ()
    impossible: bool = False  # two protocols or disjoint ports on one path

    def narrowed(self, other: _Match) -> _Match:
        protocol, impossible = self.protocol, self.impossible or other.impossible
        if other.protocol is not None:
            impossible = impossible or (protocol is not None and protocol != other.protocol)
            protocol = other.protocol
        ports = self.ports
        if other.ports is not None:
            ports = other.ports if ports is None else _intersect(ports, other.ports)
            impossible = impossible or not ports
        return _Match(protocol, ports, (*self.conditions, *other.conditions), impossible)


@dataclass(frozen=True, slots=True)
class _Rule:
    text: str
    chain: str
    match: _Match
    target: str | None
    helper: str | None
    goto: bool = False  # -g: the chain's end returns past the chain that went to it


def parse_foreign(text: str) -> tuple[ForeignRule, ...]:
    """The foreign `-j CT` rules reached from PREROUTING and OUTPUT in one family's
    `iptables-save -t raw` output (other tables in the text are skipped), in the order the
    kernel meets them: PREROUTING's first, then OUTPUT's."""
    chains = _chains(text)
    found: list[ForeignRule] = []
    for hook, direction in _HOOKS.items():
        rules = chains.get(hook, [])
        ours = CHAIN_BY_DIRECTION[direction].name
        cthm_at = next((i for i, rule in enumerate(rules) if rule.target == ours), len(rules))
        ended: tuple[Filter, ...] = ()
        for index, rule in enumerate(rules):
            found.extend(
                _walk(chains, rule, hook, direction, _Match(), index < cthm_at, (hook,), 0, ended)
            )
            ended = _ended_after(rule, ended)
    return tuple(found)


def shadowed(
    assignments: Iterable[Assignment], foreign: Sequence[ForeignRule], backend: Backend
) -> list[Shadow]:
    """Per assignment, the first foreign rule that (may) decide its connections' helper in
    place of cthm, by the precedence of `backend`; assignments no rule shadows are left out. A
    rule giving the very helper cthm assigns changes nothing and is not reported."""
    if backend not in ("nftables", "iptables"):
        raise ValueError(f"unknown backend {backend!r}")
    shadows: list[Shadow] = []
    for assignment in assignments:
        for rule in foreign:
            if not rule.matches(assignment):
                continue
            if backend == "iptables" and not rule.before_cthm:
                continue
            if backend == "nftables" and rule.helper is None:
                continue  # a template without a helper: cthm's chain still assigns
            if rule.helper is not None and rule.helper == assignment.helper:
                continue
            effect = "no helper at all" if rule.helper is None else f"helper {rule.helper} wins"
            shadows.append(Shadow(assignment, rule, effect))
            break  # the first one reached decides
    return shadows


def find_shadows(assignments: Iterable[Assignment], tables: Iterable[RawTable]) -> list[Shadow]:
    """`shadowed` over every raw table, each judged on its own (see RawTable): one Shadow per
    (assignment, rule) with the families it was found in, sorted by assignment then rule."""
    assignments = list(assignments)
    found: dict[tuple[tuple[str, int, str], str], tuple[Shadow, set[str]]] = {}
    for table in tables:
        backend: Backend = "iptables" if table.holds_cthm else "nftables"
        for shadow in shadowed(assignments, table.rules, backend):
            a = shadow.assignment
            key = ((a.protocol.value, a.port, a.direction.value), shadow.rule_text)
            found.setdefault(key, (shadow, set()))[1].add(table.family)
    return [
        replace(shadow, families=tuple(sorted(families)))
        for _, (shadow, families) in sorted(found.items(), key=lambda item: item[0])
    ]


def _walk(
    chains: dict[str, list[_Rule]],
    rule: _Rule,
    hook: str,
    direction: Direction,
    path_match: _Match,
    before: bool,
    path: tuple[str, ...],
    depth: int,
    ended: tuple[Filter, ...],
) -> list[ForeignRule]:
    match = path_match.narrowed(rule.match)
    if match.impossible:
        return []
    if rule.target == "CT":
        return [
            ForeignRule(
                text=rule.text,
                chain=rule.chain,
                hook=hook,
                direction=direction,
                protocol=match.protocol,
                ports=match.ports,
                helper=rule.helper,
                before_cthm=before,
                conditions=match.conditions,
                unreached_for=ended,
            )
        ]
    target = rule.target
    if target is None or target not in chains or target in CHAIN_BY_NAME or target in path:
        return []
    if depth >= MAX_DEPTH:
        return []
    found: list[ForeignRule] = []
    inner_ended = ended
    for inner in chains[target]:
        found.extend(
            _walk(
                chains,
                inner,
                hook,
                direction,
                match,
                before,
                (*path, target),
                depth + 1,
                inner_ended,
            )
        )
        inner_ended = _ended_after(inner, inner_ended)
    return found


def _ended_after(rule: _Rule, ended: tuple[Filter, ...]) -> tuple[Filter, ...]:
    """`ended` plus the rule's protocol and ports if it ends its chain for what it matches;
    a rule with other conditions may not match, so it adds nothing."""
    if not (rule.goto or rule.target in _ENDS_CHAIN) or rule.match.conditions:
        return ended
    return (*ended, (rule.match.protocol, rule.match.ports))


def _covers(
    protocol: str | None, ports: tuple[PortRange, ...] | None, assignment: Assignment
) -> bool:
    if protocol is not None and protocol != assignment.protocol.value:
        return False
    return ports is None or any(lo <= assignment.port <= hi for lo, hi in ports)


def _chains(text: str) -> dict[str, list[_Rule]]:
    """The raw table's rules by chain, in order (user chains declared but empty included)."""
    chains: dict[str, list[_Rule]] = {}
    for _, chain, line, words in save_lines(text, table=TABLE):
        if words is None:
            chains.setdefault(chain, [])
            continue
        rule = _parse_rule(line)
        if rule is not None:
            chains.setdefault(rule.chain, []).append(rule)
    return chains


def _parse_rule(line: str) -> _Rule | None:
    """A rule line's match, target and helper; quoted words (a comment) are read as the kernel
    printed them, so they are split again here, as a shell would."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if len(words) < 2 or words[0] != "-A":
        return None
    chain = words[1]
    protocol: str | None = None
    ports: tuple[PortRange, ...] | None = None
    conditions: list[str] = []
    target: str | None = None
    helper: str | None = None
    goto = False
    i, negate = 2, False
    while i < len(words):
        word = words[i]
        value = words[i + 1] if i + 1 < len(words) else ""
        if word == "!":
            negate, i = True, i + 1
            continue
        if word in _JUMPS:
            target, goto = value, word in _GOTOS
            rest = words[i + 2 :]
            if target == "CT" and "--helper" in rest[:-1]:
                helper = rest[rest.index("--helper") + 1]
            break
        if word in _NEUTRAL and value in _NEUTRAL_MODULES:
            i += 2
            continue
        if word == "--comment":
            i += 2
            continue
        if word in ("-p", "--protocol") and not negate:
            protocol = value.lower()
        elif word in _PORT_OPTIONS and not negate and _ports(value) is not None:
            ports = _ports(value)
        else:
            # An option and its value (if any), as written: not evaluated here.
            takes = i + 1 < len(words) and not words[i + 1].startswith("-")
            shown = " ".join((*(["!"] if negate else []), word, *([value] if takes else [])))
            conditions.append(shown)
            i += 2 if takes else 1
            negate = False
            continue
        negate = False
        i += 2
    return _Rule(line, chain, _Match(protocol, ports, tuple(conditions)), target, helper, goto)


def _ports(value: str) -> tuple[PortRange, ...] | None:
    """`21`, `1000:2000`, `21,8021,9000:9010` as ranges; None if unreadable."""
    ranges: list[PortRange] = []
    for part in value.split(","):
        lo, _, hi = part.partition(":")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        ranges.append((int(lo), int(hi or lo)))
    return tuple(ranges)


def _intersect(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> tuple[PortRange, ...]:
    return tuple(
        (max(alo, blo), min(ahi, bhi))
        for alo, ahi in a
        for blo, bhi in b
        if max(alo, blo) <= min(ahi, bhi)
    )
