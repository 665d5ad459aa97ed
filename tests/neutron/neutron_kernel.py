"""What a router namespace's kernel does with new connections, whoever wrote the rules: the
(family, protocol, port, kernel helper) of every `-j CT --helper` rule in the iptables raw
tables (Neutron's chains, or cthm's iptables backend) and of cthm's nftables table."""

from __future__ import annotations

import re

from cthm.netfilter import NftablesBackend, SubprocessRunner
from cthm.testing import run_in_namespace

Active = tuple[str, str, int, str]
"""(family "ipv4"|"ipv6", protocol, port, kernel helper)."""

_CT_RULE = re.compile(r"-p (?P<proto>\w+)\b.*--dport (?P<port>\d+)\b.*-j CT --helper (?P<h>\S+)")
_TOOLS = (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save"))
# What the kernel reports for cthm's `ct helper` objects: "ip" for an IPv4-only helper.
_L3PROTO = {"ip": ("ipv4",), "ip6": ("ipv6",), "inet": ("ipv4", "ipv6")}


def iptables_rules(namespace: str) -> set[Active]:
    found: set[Active] = set()
    for family, tool in _TOOLS:
        text = run_in_namespace(namespace, [tool, "-t", "raw"]).stdout
        for line in text.splitlines():
            match = _CT_RULE.search(line)
            if line.startswith("-A ") and match:
                found.add((family, match["proto"], int(match["port"]), match["h"]))
    return found


def nft_rules(namespace: str) -> set[Active]:
    table = NftablesBackend(SubprocessRunner()).read(namespace)
    if table is None:
        return set()
    found: set[Active] = set()
    for a in table.assignments:
        for obj in table.helpers:
            if obj.type == a.helper and obj.protocol == a.protocol:
                for family in _L3PROTO[obj.l3proto]:
                    found.add((family, str(a.protocol), a.port, a.helper))
    return found


def active(namespace: str) -> set[Active]:
    """Every helper assignment in the namespace, from either backend."""
    return iptables_rules(namespace) | nft_rules(namespace)


def ipv4(namespace: str) -> set[tuple[str, int, str]]:
    """The IPv4 assignments as (protocol, port, helper)."""
    return {(p, port, h) for family, p, port, h in active(namespace) if family == "ipv4"}


def both(*assignments: tuple[str, int, str]) -> set[Active]:
    """The assignments in both families."""
    return {(f, *a) for f in ("ipv4", "ipv6") for a in assignments}
