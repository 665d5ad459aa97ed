"""Hand-written helper tables for the traffic harness's self-tests (cthm itself not involved)."""

from __future__ import annotations

from cthm.testing import Topology, nft_apply


def helper_table(priority: str, hook: str = "prerouting") -> str:
    """The hand-written helper table of this harness's self-test (DESIGN.md's layout), its
    chain on `hook`: "prerouting" (connections the router forwards) or "output" (those it
    originates)."""
    return f"""\
table inet cthm {{
    ct helper ftp-tcp {{ type "ftp" protocol tcp; l3proto inet; }}
    ct helper tftp-udp {{ type "tftp" protocol udp; l3proto inet; }}
    chain {hook} {{
        type filter hook {hook} priority {priority}; policy accept;
        ct helper set tcp dport map {{ 21 : "ftp-tcp" }}
        ct helper set udp dport map {{ 69 : "tftp-udp" }}
    }}
}}
"""


def output_helper_table(priority: str = "filter") -> str:
    """The hand-written table assigning the helpers to connections the router originates."""
    return helper_table(priority, "output")


def replace_cthm_table(topology: Topology, table: str) -> None:
    """Swaps the router's `inet cthm` table for `table` in one transaction."""
    nft_apply(topology.router_ns, f"add table inet cthm\ndelete table inet cthm\n{table}")


def assign_with_nft(topology: Topology, *, priority: str = "filter") -> None:
    nft_apply(topology.router_ns, helper_table(priority))


def assign_output_with_nft(topology: Topology) -> None:
    nft_apply(topology.router_ns, output_helper_table())
