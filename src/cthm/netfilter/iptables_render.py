"""Pure rendering for the iptables backend: restore input for cthm's chains in the `raw` table.

Layout, per family (iptables for IPv4, ip6tables for IPv6), written with `--noflush`:

    *raw
    :cthm-PREROUTING - [0:0]                  (declaring a chain flushes it: only ours)
    :cthm-OUTPUT - [0:0]                      (only while output has assignments)
    -A cthm-PREROUTING -m comment --comment "cthm:<deployment id>"   (whose chain it is)
    -A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp
    -A cthm-OUTPUT -m comment --comment "cthm:<deployment id>"
    -A cthm-OUTPUT -p tcp -m tcp --dport 21 -j CT --helper ftp
    -A PREROUTING -j cthm-PREROUTING          (only when the jump is missing)
    -A OUTPUT -j cthm-OUTPUT                  (likewise)
    COMMIT

A chain that already holds exactly what it must is not written at all, so a re-apply changes no
rule and a change in one direction leaves the other's rules alone. A direction that empties has
its jump and chain removed (cthm-PREROUTING stays, empty, while the router is ours: see
iptables_model). Rules are written exactly as `iptables-save` prints them
(`-p tcp -m tcp --dport 21`, checked against iptables 1.8.9, nf_tables and legacy), so a
read-back compares equal. IPv6 gets only the helpers the kernel has for IPv6 (catalog `ipv6`):
an ip6tables `CT --helper irc` rule fails the whole ip6tables-restore.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cthm.domain import KERNEL_HELPERS, Assignment
from cthm.netfilter.iptables_model import (
    CHAIN_BY_DIRECTION,
    INGRESS_CHAIN,
    TABLE,
    SavedTable,
)
from cthm.netfilter.model import KernelTable, check_owner
from cthm.netfilter.render import desired_table

# The ingress chain's names, as before directions existed.
CHAIN = INGRESS_CHAIN.name
JUMP_SPEC = INGRESS_CHAIN.jump
# Unknown helper types are kept off IPv6: writing one there could fail the whole restore.
IPV6_HELPERS = frozenset(spec.name for spec in KERNEL_HELPERS if spec.ipv6)


def desired_assignments(assignments: Iterable[Assignment]) -> tuple[Assignment, ...]:
    """Checked, sorted by (protocol, port, direction), duplicates merged; UnsafeValue for a bad
    value."""
    return desired_table(assignments).assignments


def desired_iptables(assignments: Iterable[Assignment], owner: str | None = None) -> KernelTable:
    """What `IptablesBackend.read()` returns after `apply(assignments)` by a backend marking
    with `owner`: no helper objects."""
    if owner is not None:
        check_owner(owner)
    return KernelTable(
        assignments=desired_assignments(assignments), helpers=frozenset(), owner=owner
    )


def for_family(assignments: Sequence[Assignment], *, ipv6: bool) -> tuple[Assignment, ...]:
    """The assignments one family's chains hold."""
    if not ipv6:
        return tuple(assignments)
    return tuple(a for a in assignments if a.helper in IPV6_HELPERS)


def rule_spec(assignment: Assignment) -> str:
    """The rule as `iptables-save` prints it, without the leading `-A`, in its direction's
    chain."""
    return _rule(CHAIN_BY_DIRECTION[assignment.direction].name, assignment)


def _rule(chain: str, assignment: Assignment) -> str:
    protocol = assignment.protocol.value
    return (
        f"{chain} -p {protocol} -m {protocol} --dport {assignment.port} "
        f"-j CT --helper {assignment.helper}"
    )


def render_apply(
    assignments: Sequence[Assignment], saved: SavedTable, owner: str | None = None
) -> str | None:
    """Restore input making our chains hold exactly `assignments` (one family's, already
    checked and sorted by `desired_assignments`), each chain headed by the identity marker of
    `owner` (none when None), given what the family holds now (`saved`); None when nothing
    needs to change.

    A chain in use gets exactly one canonical jump (extra or odd jumps to it are deleted); a
    chain no longer in use is removed with every jump to it. Declaring a chain creates it, or
    flushes it when it exists."""
    declared: list[str] = []
    rules: list[str] = []
    jumps: list[str] = []
    removed: list[str] = []
    for current in saved.chains:
        chain = current.chain
        wanted = tuple([a for a in assignments if a.direction is chain.direction])
        if wanted or chain.anchor:
            if current.holds_exactly(wanted, owner):
                continue  # not written: no rule of it changes
            declared.append(f":{chain.name} - [0:0]")
            if owner is not None:
                rules.append(f"-A {chain.marker(owner)}")
            rules.extend([f"-A {_rule(chain.name, a)}" for a in wanted])
            kept = False
            for spec in current.jumps:
                if spec == chain.jump and not kept:
                    kept = True
                    continue
                jumps.append(f"-D {spec}")
            if not kept:
                jumps.append(f"-A {chain.jump}")
        elif not current.empty:
            _remove(current.present, current.jumps, chain.name, declared, jumps, removed)
    if not declared and not jumps:
        return None
    return _text([*declared, *rules, *jumps, *removed])


def render_delete(saved: SavedTable) -> str | None:
    """Restore input removing every jump to our chains and the chains themselves; None if the
    family holds nothing of ours."""
    declared: list[str] = []
    jumps: list[str] = []
    removed: list[str] = []
    for current in saved.chains:
        _remove(current.present, current.jumps, current.chain.name, declared, jumps, removed)
    if not declared and not jumps:
        return None
    return _text([*declared, *jumps, *removed])


def _remove(
    present: bool,
    chain_jumps: Sequence[str],
    name: str,
    declared: list[str],
    jumps: list[str],
    removed: list[str],
) -> None:
    # Flushed first (a rule of ours may refer to the other chain of ours), unreferenced next,
    # deleted last: -X of a referenced or non-empty chain fails.
    if present:
        declared.append(f":{name} - [0:0]")
        removed.append(f"-X {name}")
    jumps.extend(f"-D {spec}" for spec in chain_jumps)


def _text(lines: list[str]) -> str:
    return "\n".join([f"*{TABLE}", *lines, "COMMIT"]) + "\n"
