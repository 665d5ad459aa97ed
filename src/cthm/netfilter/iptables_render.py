"""Pure rendering for the iptables backend: restore input for cthm's chain in the `raw` table.

Layout, per family (iptables for IPv4, ip6tables for IPv6), written with `--noflush`:

    *raw
    :cthm-PREROUTING - [0:0]                  (declaring a chain flushes it: only ours)
    -A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp
    -A PREROUTING -j cthm-PREROUTING          (only when the jump is missing)
    COMMIT

Rules are written exactly as `iptables-save` prints them (`-p tcp -m tcp --dport 21`, checked
against iptables 1.8.9, nf_tables and legacy), so a read-back compares equal. IPv6 gets only the
helpers the kernel has for IPv6 (catalog `ipv6`): an ip6tables `CT --helper irc` rule fails the
whole ip6tables-restore.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cthm.domain import KERNEL_HELPERS, Assignment
from cthm.netfilter.model import KernelTable
from cthm.netfilter.render import desired_table

TABLE = "raw"
CHAIN = "cthm-PREROUTING"
HOOK_CHAIN = "PREROUTING"
JUMP_SPEC = f"{HOOK_CHAIN} -j {CHAIN}"
# Unknown helper types are kept off IPv6: writing one there could fail the whole restore.
IPV6_HELPERS = frozenset(spec.name for spec in KERNEL_HELPERS if spec.ipv6)


def desired_assignments(assignments: Iterable[Assignment]) -> tuple[Assignment, ...]:
    """Checked, sorted by (protocol, port), duplicates merged; UnsafeValue for a bad value."""
    return desired_table(assignments).assignments


def desired_iptables(assignments: Iterable[Assignment]) -> KernelTable:
    """What `IptablesBackend.read()` returns after `apply(assignments)`: no helper objects."""
    return KernelTable(assignments=desired_assignments(assignments), helpers=frozenset())


def for_family(assignments: Sequence[Assignment], *, ipv6: bool) -> tuple[Assignment, ...]:
    """The assignments one family's chain holds."""
    if not ipv6:
        return tuple(assignments)
    return tuple(a for a in assignments if a.helper in IPV6_HELPERS)


def rule_spec(assignment: Assignment) -> str:
    """The rule as `iptables-save` prints it, without the leading `-A`."""
    protocol = assignment.protocol.value
    return (
        f"{CHAIN} -p {protocol} -m {protocol} --dport {assignment.port} "
        f"-j CT --helper {assignment.helper}"
    )


def render_apply(assignments: Sequence[Assignment], *, jumps: Sequence[str]) -> str:
    """Restore input making our chain hold exactly `assignments` (already checked by
    `desired_assignments`), with one canonical jump. `jumps` are the specs (save lines without
    `-A`) of every rule elsewhere that jumps to our chain: extra or odd ones are deleted.
    Declaring the chain creates it, or flushes it when it exists."""
    lines = [f"*{TABLE}", f":{CHAIN} - [0:0]"]
    lines.extend(f"-A {rule_spec(a)}" for a in assignments)
    kept = False
    for spec in jumps:
        if spec == JUMP_SPEC and not kept:
            kept = True
            continue
        lines.append(f"-D {spec}")
    if not kept:
        lines.append(f"-A {JUMP_SPEC}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_delete(*, jumps: Sequence[str], chain_present: bool) -> str | None:
    """Restore input removing every jump to our chain and the chain itself; None if there is
    nothing of ours."""
    if not jumps and not chain_present:
        return None
    lines = [f"*{TABLE}"]
    if chain_present:
        lines.append(f":{CHAIN} - [0:0]")  # flushes it, so -X cannot fail on our own rules
    lines.extend(f"-D {spec}" for spec in jumps)
    if chain_present:
        lines.append(f"-X {CHAIN}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
