"""Parsing `iptables-save -t raw` output: only cthm's chain and the rules that jump to it.

Everything else (other chains, Neutron's `neutron-l3-agent-*`, other tables) is skipped unread.
A rule in our chain that cthm would not write, a second rule for a (protocol, port) (the first
CT target wins in the kernel), an odd or extra jump: each becomes a `garbage` description.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from cthm.domain import Assignment, Protocol
from cthm.netfilter.iptables_render import CHAIN, JUMP_SPEC, TABLE

_RULE = re.compile(
    rf"-A {re.escape(CHAIN)} -p (tcp|udp) -m \1 --dport ([1-9][0-9]{{0,4}}) "
    r"-j CT --helper ([A-Za-z0-9][A-Za-z0-9._-]{0,14})"
)
_LIMIT = 20  # garbage descriptions kept per family; a broken chain need not be listed whole


@dataclass(frozen=True, slots=True)
class SavedChain:
    """cthm's chain in one family's `raw` table, as iptables-save printed it.

    `jumps` are the specs (save lines without `-A`) of all rules outside our chain that jump or
    go to it, in order.
    """

    present: bool
    assignments: tuple[Assignment, ...]
    jumps: tuple[str, ...]
    garbage: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Nothing of cthm's in this family."""
        return not self.present and not self.jumps


def _targets_our_chain(words: list[str]) -> bool:
    return any(
        word in ("-j", "-g", "--jump", "--goto") and following == CHAIN
        for word, following in itertools.pairwise(words)
    )


def parse_save(text: str) -> SavedChain:
    in_raw = False
    present = False
    jumps: list[str] = []
    found: dict[tuple[Protocol, int], Assignment] = {}
    garbage: list[str] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_raw = line == f"*{TABLE}"
            continue
        if not in_raw or line == "COMMIT":
            continue
        if line.startswith(":"):
            if line.split(" ", 1)[0] == f":{CHAIN}":
                present = True
            continue
        words = line.split()
        if len(words) < 2 or words[0] != "-A":
            continue
        if words[1] == CHAIN:
            _parse_rule(line, found, garbage)
        elif _targets_our_chain(words):
            jumps.append(line[3:])
    canonical = jumps.count(JUMP_SPEC)
    for spec in jumps:
        if spec != JUMP_SPEC:
            garbage.append(f"foreign jump to {CHAIN}: {spec}")
    if canonical > 1:
        garbage.append(f"{canonical} jumps `{JUMP_SPEC}` instead of one")
    if present and canonical == 0:
        garbage.append(f"jump `{JUMP_SPEC}` missing")
    if not present and jumps:
        garbage.append(f"chain {CHAIN} missing")  # cannot happen in a consistent kernel
    if len(garbage) > _LIMIT:
        garbage[_LIMIT:] = [f"... and {len(garbage) - _LIMIT} more"]
    ordered = tuple(found[key] for key in sorted(found))
    return SavedChain(present, ordered, tuple(jumps), tuple(garbage))


def _parse_rule(
    line: str, found: dict[tuple[Protocol, int], Assignment], garbage: list[str]
) -> None:
    match = _RULE.fullmatch(line)
    port = int(match.group(2)) if match else 0
    if match is None or port > 65535:
        garbage.append(f"unexpected rule: {line}")
        return
    assignment = Assignment(Protocol(match.group(1)), port, match.group(3))
    key = (assignment.protocol, assignment.port)
    if key in found:
        garbage.append(f"shadowed rule (an earlier one wins): {line}")
        return
    found[key] = assignment
