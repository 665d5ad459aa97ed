"""Which helper a connection gets when cthm and another party (Neutron's iptables rules, a
foreign nftables table) both assign one to tcp/21 in the router namespace: pinned with traffic.

Each case builds the rules, connects the client to the server's port 21 through the router and
reads the helper of that connection from the router's conntrack table (`helper=`). cthm's
real backends bind ftp; the other party binds irc (a TCP helper that is not ftp, so the winner
is visible). What this kernel does, as the tests below pin it:

- A helper is assigned once per connection, by the first assignment that runs; later ones are
  no-ops. iptables `-j CT` rules (raw table, before conntrack lookup) attach a template, and an
  `-j CT` on a packet that already has one does nothing; nft `ct helper set` (after conntrack
  lookup) does nothing to a connection that already has a helper.
- iptables backend: whichever jump comes first in raw PREROUTING wins; and any earlier `-j CT`,
  even one without `--helper`, leaves the connection with no helper at all.
- nftables backend: any iptables `-j CT --helper` for the port wins, whatever the order of
  creation; a helper-less template does not stop cthm. A foreign nft chain at a lower
  priority number wins, at a higher one loses; at equal priority the chain hooked most
  recently runs first (and cthm re-creates its table on every apply).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import IptablesBackend, NftablesBackend, make_runner
from cthm.testing import (
    RunningServer,
    Topology,
    conntrack_entries,
    conntrack_flush,
    nft_apply,
    run_in_namespace,
    tcp_probe,
)

pytestmark = [pytest.mark.traffic, pytest.mark.kernel]

PORT = 21
OURS = "ftp"
THEIRS = "irc"
BINDING = Assignment(protocol=Protocol.TCP, port=PORT, helper=OURS)
NEUTRON_CHAIN = "neutron-l3-agent-PREROUTING"
CTHM_CHAIN = "cthm-PREROUTING"
FOREIGN_TABLE = "foreign_helpers"
_HELPER = re.compile(r"\bhelper=(\S+)")

Probe = Callable[[], str | None]


@pytest.fixture(params=["nft", "legacy"])
def flavour(request: pytest.FixtureRequest) -> str:
    """The iptables flavour of both cthm's backend and the Neutron-style rules."""
    kind = str(request.param)
    if shutil.which(f"iptables-{kind}-restore") is None:
        pytest.skip(f"iptables-{kind} not installed")
    return kind


@pytest.fixture
def nftables(topology: Topology) -> Iterator[NftablesBackend]:
    backend = NftablesBackend(make_runner("subprocess"))
    kind = (THEIRS, Protocol.TCP)
    if not backend.available_helpers(topology.router_ns, [kind])[kind]:
        reason = f"kernel lacks the {THEIRS} helper (the other party's helper here)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield backend
    backend.close()


@pytest.fixture
def iptables(flavour: str) -> Iterator[IptablesBackend]:
    backend = IptablesBackend("subprocess", flavour=flavour)
    yield backend
    backend.close()


@pytest.fixture
def probe(topology: Topology, ftp_server: RunningServer, nftables: NftablesBackend) -> Probe:
    """Connects client -> server:21 through the router on a fresh conntrack table; returns the
    helper of that connection, None when it has none."""
    t = topology

    def connect() -> str | None:
        conntrack_flush(t.router_ns)
        assert tcp_probe(t.client_ns, t.server_addr, PORT) == "connected"
        entries = conntrack_entries(t.router_ns, "tcp", PORT, source=t.client_addr)
        assert len(entries) == 1, entries
        found = _HELPER.search(entries[0])
        return found.group(1) if found else None

    return connect


def neutron_rules(target: str) -> str:
    """Neutron-style raw rules (restore input, --noflush): its chain, jumped to from PREROUTING
    by an appended rule, sending tcp/21 to `-j CT <target>`."""
    return f"""\
*raw
:{NEUTRON_CHAIN} - [0:0]
-A PREROUTING -j {NEUTRON_CHAIN}
-A {NEUTRON_CHAIN} -p tcp -m tcp --dport {PORT} -j CT {target}
COMMIT
"""


def add_neutron_rules(topology: Topology, flavour: str, target: str = f"--helper {THEIRS}") -> None:
    run_in_namespace(
        topology.router_ns,
        [f"iptables-{flavour}-restore", "--noflush"],
        input=neutron_rules(target),
    )


def prerouting_jumps(topology: Topology, flavour: str) -> list[str]:
    """The targets of raw PREROUTING's rules, in the order the kernel runs them."""
    saved = run_in_namespace(topology.router_ns, [f"iptables-{flavour}-save", "-t", "raw"])
    return re.findall(r"^-A PREROUTING .*-j (\S+)$", saved.stdout, flags=re.MULTILINE)


def foreign_table(priority: str) -> str:
    """Another tool's nft table assigning irc to tcp/21 in a prerouting chain at `priority`."""
    return f"""\
table inet {FOREIGN_TABLE} {{
    ct helper {THEIRS}-tcp {{ type "{THEIRS}" protocol tcp; l3proto ip; }}
    chain prerouting {{
        type filter hook prerouting priority {priority}; policy accept;
        tcp dport {PORT} ct helper set "{THEIRS}-tcp"
    }}
}}
"""


# -- the probe itself -------------------------------------------------------------------------


def test_probe_reads_no_helper_when_nothing_assigns_one(probe: Probe) -> None:
    assert probe() is None


def test_probe_reads_each_party_alone(
    topology: Topology, probe: Probe, nftables: NftablesBackend, iptables: IptablesBackend
) -> None:
    iptables.apply(topology.router_ns, [BINDING])
    assert probe() == OURS
    iptables.delete(topology.router_ns)
    nftables.apply(topology.router_ns, [BINDING])
    assert probe() == OURS
    nftables.delete(topology.router_ns)
    add_neutron_rules(topology, iptables.flavour)
    assert probe() == THEIRS


# -- (a) iptables backend against Neutron-style rules ------------------------------------------


@pytest.mark.parametrize(("first", "winner"), [("neutron", THEIRS), ("cthm", OURS)])
def test_iptables_backend_first_jump_in_raw_prerouting_wins(
    topology: Topology, probe: Probe, iptables: IptablesBackend, first: str, winner: str
) -> None:
    # Each party appends its jump, so the one that writes first is first.
    if first == "neutron":
        add_neutron_rules(topology, iptables.flavour)
        iptables.apply(topology.router_ns, [BINDING])
        expected_order = [NEUTRON_CHAIN, CTHM_CHAIN]
    else:
        iptables.apply(topology.router_ns, [BINDING])
        add_neutron_rules(topology, iptables.flavour)
        expected_order = [CTHM_CHAIN, NEUTRON_CHAIN]
    assert prerouting_jumps(topology, iptables.flavour) == expected_order
    assert probe() == winner


def test_iptables_backend_assigns_nothing_after_an_earlier_template_without_helper(
    topology: Topology, probe: Probe, iptables: IptablesBackend
) -> None:
    # A bare `-j CT` attaches a template with no helper; cthm's `-j CT --helper ftp` then finds
    # a template already there and does nothing: the connection gets no helper at all.
    add_neutron_rules(topology, iptables.flavour, target="")
    iptables.apply(topology.router_ns, [BINDING])
    assert prerouting_jumps(topology, iptables.flavour) == [NEUTRON_CHAIN, CTHM_CHAIN]
    assert probe() is None


def test_iptables_backend_beats_a_foreign_nft_chain(
    topology: Topology, probe: Probe, iptables: IptablesBackend
) -> None:
    # Raw-table templates are applied before conntrack lookup; any nft `ct helper set` comes
    # after it and finds the helper already assigned.
    nft_apply(topology.router_ns, foreign_table("filter - 1"))
    iptables.apply(topology.router_ns, [BINDING])
    assert probe() == OURS


# -- (b) nftables backend against iptables rules and foreign nft tables --------------------------


@pytest.mark.parametrize("neutron_first", [True, False], ids=["neutron-first", "cthm-first"])
def test_nftables_backend_loses_to_any_iptables_helper_rule(
    topology: Topology, probe: Probe, nftables: NftablesBackend, flavour: str, neutron_first: bool
) -> None:
    if neutron_first:
        add_neutron_rules(topology, flavour)
        nftables.apply(topology.router_ns, [BINDING])
    else:
        nftables.apply(topology.router_ns, [BINDING])
        add_neutron_rules(topology, flavour)
    assert probe() == THEIRS


def test_nftables_backend_assigns_through_a_template_without_helper(
    topology: Topology, probe: Probe, nftables: NftablesBackend, flavour: str
) -> None:
    add_neutron_rules(topology, flavour, target="")
    nftables.apply(topology.router_ns, [BINDING])
    assert probe() == OURS


@pytest.mark.parametrize(
    ("priority", "winner"), [("filter - 1", THEIRS), ("filter + 1", OURS)], ids=["before", "after"]
)
@pytest.mark.parametrize("foreign_first", [True, False], ids=["foreign-first", "cthm-first"])
def test_nftables_backend_against_a_foreign_chain_lower_priority_wins(
    topology: Topology,
    probe: Probe,
    nftables: NftablesBackend,
    priority: str,
    winner: str,
    foreign_first: bool,
) -> None:
    if foreign_first:
        nft_apply(topology.router_ns, foreign_table(priority))
        nftables.apply(topology.router_ns, [BINDING])
    else:
        nftables.apply(topology.router_ns, [BINDING])
        nft_apply(topology.router_ns, foreign_table(priority))
    assert probe() == winner


def test_nftables_backend_at_equal_priority_the_chain_hooked_last_wins(
    topology: Topology, probe: Probe, nftables: NftablesBackend
) -> None:
    nftables.apply(topology.router_ns, [BINDING])
    nft_apply(topology.router_ns, foreign_table("filter"))
    assert probe() == THEIRS
    # An apply replaces cthm's table (new chain, hooked anew): now cthm's runs first.
    nftables.apply(topology.router_ns, [BINDING])
    assert probe() == OURS
    # And the other table, reloaded the same way, takes the lead back.
    nft_apply(
        topology.router_ns,
        f"add table inet {FOREIGN_TABLE}\ndelete table inet {FOREIGN_TABLE}\n"
        + foreign_table("filter"),
    )
    assert probe() == THEIRS
