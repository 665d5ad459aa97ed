"""Binding direction against the real kernel, one contract for both backends: nftables (both
runners) and iptables (both flavours, when installed), in namespaces the tests create.

End state is read with the kernel's own tools (`nft list table inet cthm`, `iptables-save -t raw`),
and everything that is not cthm's, including Neutron-style chains in raw PREROUTING and OUTPUT,
must stay byte-for-byte the same through every operation. (That the kernel then really assigns
the helper to locally originated traffic is tested with traffic in tests/traffic.)
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter import (
    IptablesBackend,
    LibNftablesRunner,
    NftablesBackend,
    SubprocessRunner,
)
from cthm.testing import NamespaceFactory, run_in_namespace

from .conftest import FOREIGN_RULESET, nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OUT = Direction.OUTPUT
INGRESS = [Assignment(TCP, 21, "ftp"), Assignment(UDP, 69, "tftp")]
OUTPUT = [
    Assignment(TCP, 21, "irc", OUT),  # the same port as an ingress binding, another helper
    Assignment(UDP, 69, "tftp", OUT),  # the same port and helper as an ingress binding
    Assignment(TCP, 2121, "ftp", OUT),
]
MIXED = [*INGRESS, *OUTPUT]

# Neutron's L3 agent layout in raw (PREROUTING and OUTPUT) and a firewall: never cthm's.
NEUTRON = """\
*raw
:neutron-l3-agent-OUTPUT - [0:0]
:neutron-l3-agent-PREROUTING - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A OUTPUT -j neutron-l3-agent-OUTPUT
-A neutron-l3-agent-OUTPUT -p udp -m udp --dport 69 -j CT --helper tftp
-A neutron-l3-agent-PREROUTING -p tcp -m tcp --dport 2121 -j CT --helper ftp
COMMIT
*filter
:FORWARD DROP [0:0]
:neutron-filter-top - [0:0]
-A FORWARD -j neutron-filter-top
-A OUTPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A neutron-filter-top -p udp -m udp --dport 69 -j ACCEPT
COMMIT
"""
# Another nftables user with an output chain of its own, beside our table.
FOREIGN_OUTPUT = """\
add table inet mine
add ct helper inet mine ftp-tcp { type "ftp" protocol tcp; l3proto inet; }
add chain inet mine output { type filter hook output priority filter; policy accept; }
add rule inet mine output tcp dport 2121 ct helper set "ftp-tcp"
"""


@dataclass
class Kernel:
    """A backend under test and the kernel's own view of what it wrote."""

    backend: NftablesBackend | IptablesBackend
    # iptables flavour of the iptables backend, or the one Neutron's rules use beside nftables
    flavour: str

    @property
    def is_nft(self) -> bool:
        return isinstance(self.backend, NftablesBackend)

    def tool(self, action: str, *, ipv6: bool) -> str:
        return f"{'ip6tables' if ipv6 else 'iptables'}-{self.flavour}-{action}"

    def save(self, namespace: str, *args: str, ipv6: bool = False) -> str:
        """iptables-save output without comment lines (they carry dates)."""
        text = run_in_namespace(namespace, [self.tool("save", ipv6=ipv6), *args]).stdout
        return "\n".join(line for line in text.splitlines() if not line.startswith("#"))

    def restore(self, namespace: str, text: str, *, ipv6: bool = False) -> None:
        run_in_namespace(namespace, [self.tool("restore", ipv6=ipv6), "--noflush"], input=text)

    def ours(self, namespace: str, *, ipv6: bool = False) -> list[str]:
        """The kernel's own listing of cthm's state: the table for nftables, our lines of
        `iptables-save -t raw` for iptables."""
        if self.is_nft:
            done = run_in_namespace(namespace, ["nft", "list", "table", "inet", "cthm"])
            return done.stdout.splitlines()
        text = self.save(namespace, "-t", "raw", ipv6=ipv6)
        return [line for line in text.splitlines() if "cthm-" in line]

    def outside(self, namespace: str) -> tuple[str, ...]:
        """Everything in the namespace that is not cthm's, as text, for byte-for-byte checks."""
        views = [
            "\n".join(
                line for line in self.save(namespace, ipv6=v6).splitlines() if "cthm-" not in line
            )
            for v6 in (False, True)
        ]
        if self.is_nft:
            kept, skipping = [], False
            for line in nft(namespace, "list", "ruleset").splitlines():
                skipping = skipping or line.startswith("table inet cthm {")
                if not skipping:
                    kept.append(line)
                if skipping and line == "}":
                    skipping = False
            views.append("\n".join(kept))
        return tuple(views)


BACKENDS = ["nft-libnftables", "nft-subprocess", "iptables-nft", "iptables-legacy"]


@pytest.fixture(params=BACKENDS)
def kernel(
    request: pytest.FixtureRequest, lib_runner: LibNftablesRunner, sub_runner: SubprocessRunner
) -> Iterator[Kernel]:
    kind, detail = str(request.param).split("-", 1)
    if kind == "nft":
        # The module's runners are shared: closed by their fixtures, not here.
        yield Kernel(NftablesBackend(lib_runner if detail == "libnftables" else sub_runner), "nft")
        return
    if shutil.which(f"iptables-{detail}-restore") is None:
        pytest.skip(f"iptables-{detail} not installed")
    backend = IptablesBackend("subprocess", flavour=detail)
    yield Kernel(backend, detail)
    backend.close()


@pytest.fixture
def ns(netns: NamespaceFactory) -> str:
    return netns.create("dir")


def test_mixed_directions_read_back_equal_and_show_the_output_chain(
    kernel: Kernel, ns: str
) -> None:
    kernel.backend.apply(ns, MIXED)
    assert kernel.backend.read(ns) == kernel.backend.desired(MIXED)
    read = kernel.backend.read(ns)
    assert read is not None
    assert {a.direction for a in read.assignments} == set(Direction)
    ours = kernel.ours(ns)
    if kernel.is_nft:
        text = "\n".join(ours)
        assert "chain prerouting {" in text
        assert "chain output {" in text
        assert "type filter hook output priority filter; policy accept;" in text
        assert 'tcp dport @output-ftp-tcp ct helper set "ftp-tcp"' in text
        assert 'tcp dport @output-irc-tcp ct helper set "irc-tcp"' in text
        assert "set output-irc-tcp {\n\t\ttype inet_service\n\t\telements = { 21 }" in text
        assert text.count("ct helper tftp-udp {") == 1  # one object serves both chains
        return
    assert ours == [
        ":cthm-OUTPUT - [0:0]",
        ":cthm-PREROUTING - [0:0]",
        "-A PREROUTING -j cthm-PREROUTING",
        "-A OUTPUT -j cthm-OUTPUT",
        "-A cthm-OUTPUT -p tcp -m tcp --dport 21 -j CT --helper irc",
        "-A cthm-OUTPUT -p tcp -m tcp --dport 2121 -j CT --helper ftp",
        "-A cthm-OUTPUT -p udp -m udp --dport 69 -j CT --helper tftp",
        "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp",
        "-A cthm-PREROUTING -p udp -m udp --dport 69 -j CT --helper tftp",
    ]
    # IPv6: only helpers the kernel has for IPv6 (no irc), in both directions.
    assert kernel.ours(ns, ipv6=True) == [
        ":cthm-OUTPUT - [0:0]",
        ":cthm-PREROUTING - [0:0]",
        "-A PREROUTING -j cthm-PREROUTING",
        "-A OUTPUT -j cthm-OUTPUT",
        "-A cthm-OUTPUT -p tcp -m tcp --dport 2121 -j CT --helper ftp",
        "-A cthm-OUTPUT -p udp -m udp --dport 69 -j CT --helper tftp",
        "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp",
        "-A cthm-PREROUTING -p udp -m udp --dport 69 -j CT --helper tftp",
    ]


def test_emptying_output_removes_its_chain_and_jump(kernel: Kernel, ns: str) -> None:
    kernel.backend.apply(ns, MIXED)
    kernel.backend.apply(ns, INGRESS)
    assert kernel.backend.read(ns) == kernel.backend.desired(INGRESS)
    for ipv6 in (False, True):
        ours = kernel.ours(ns, ipv6=ipv6)
        assert not any("output" in line.lower() for line in ours), ours
        assert any("prerouting" in line.lower() for line in ours)
    if not kernel.is_nft:
        assert kernel.ours(ns) == [
            ":cthm-PREROUTING - [0:0]",
            "-A PREROUTING -j cthm-PREROUTING",
            "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp",
            "-A cthm-PREROUTING -p udp -m udp --dport 69 -j CT --helper tftp",
        ]


def test_output_only_and_back_to_nothing(kernel: Kernel, ns: str) -> None:
    kernel.backend.apply(ns, OUTPUT)
    assert kernel.backend.read(ns) == kernel.backend.desired(OUTPUT)
    ours = kernel.ours(ns)
    if kernel.is_nft:
        assert "chain prerouting {" not in "\n".join(ours)  # a chain only for a direction in use
        assert "chain output {" in "\n".join(ours)
    else:
        # cthm-PREROUTING stays, empty, as the router's anchor (as with no bindings at all).
        assert [line for line in ours if "PREROUTING" in line] == [
            ":cthm-PREROUTING - [0:0]",
            "-A PREROUTING -j cthm-PREROUTING",
        ]
    kernel.backend.apply(ns, [])
    assert kernel.backend.read(ns) == kernel.backend.desired([])
    assert not any("output" in line.lower() for line in kernel.ours(ns))


def test_same_port_and_protocol_in_both_directions_with_different_helpers(
    kernel: Kernel, ns: str
) -> None:
    both = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 21, "irc", OUT)]
    kernel.backend.apply(ns, both)
    read = kernel.backend.read(ns)
    assert read == kernel.backend.desired(both)
    assert read is not None
    assert read.assignments == tuple(both)
    swapped = [Assignment(TCP, 21, "irc"), Assignment(TCP, 21, "ftp", OUT)]
    kernel.backend.apply(ns, swapped)
    assert kernel.backend.read(ns) == kernel.backend.desired(swapped)
    text = "\n".join(kernel.ours(ns))
    if kernel.is_nft:
        head = "type filter hook {} priority filter; policy accept;\n\t\ttcp dport @"
        assert head.format("prerouting") + 'ingress-irc-tcp ct helper set "irc-tcp"' in text
        assert head.format("output") + 'output-ftp-tcp ct helper set "ftp-tcp"' in text
    else:
        assert "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper irc" in text
        assert "-A cthm-OUTPUT -p tcp -m tcp --dport 21 -j CT --helper ftp" in text


def test_reapply_of_both_directions_changes_no_rule(kernel: Kernel, ns: str) -> None:
    kernel.backend.apply(ns, MIXED)
    if kernel.is_nft:
        # nftables replaces the table whole on every apply (the agent applies only on a
        # difference); the same assignments give the same table.
        table = kernel.ours(ns)
        kernel.backend.apply(ns, list(reversed(MIXED)))
        assert kernel.ours(ns) == table
        return
    first = (kernel.save(ns), kernel.save(ns, ipv6=True))
    handles = _nft_handles(ns) if kernel.flavour == "nft" else None
    kernel.backend.apply(ns, list(reversed(MIXED)))
    assert (kernel.save(ns), kernel.save(ns, ipv6=True)) == first
    if handles is not None:
        # With iptables-nft the rule handles prove no rule was deleted and re-added.
        assert _nft_handles(ns) == handles


@pytest.mark.parametrize("kernel", ["iptables-nft"], indirect=True)  # handles: nft only
def test_iptables_change_in_one_direction_leaves_the_other_alone(kernel: Kernel, ns: str) -> None:
    kernel.backend.apply(ns, MIXED)
    before = _rule_handles(ns, "cthm-PREROUTING")
    assert len(before) == len(INGRESS)
    kernel.backend.apply(ns, [*MIXED, Assignment(TCP, 6667, "irc", OUT)])
    assert _rule_handles(ns, "cthm-PREROUTING") == before
    output = _rule_handles(ns, "cthm-OUTPUT")
    assert len(output) == len(OUTPUT) + 1
    kernel.backend.apply(
        ns, [Assignment(TCP, 2121, "ftp"), *OUTPUT, Assignment(TCP, 6667, "irc", OUT)]
    )
    assert _rule_handles(ns, "cthm-OUTPUT") == output


def _nft_handles(namespace: str) -> str:
    done = run_in_namespace(namespace, ["nft", "-a", "list", "ruleset"])
    assert "handle" in done.stdout
    return done.stdout


def _rule_handles(namespace: str, chain: str) -> list[str]:
    """The handles of the rules of an iptables-nft chain in `ip raw`."""
    done = run_in_namespace(namespace, ["nft", "-a", "list", "chain", "ip", "raw", chain])
    return [
        line.rsplit("# handle ", 1)[1] for line in done.stdout.splitlines() if "counter" in line
    ]


def test_coexistence_with_neutron_raw_output_chains(kernel: Kernel, ns: str) -> None:
    for ipv6 in (False, True):
        kernel.restore(ns, NEUTRON, ipv6=ipv6)
    if kernel.is_nft:
        nft(ns, "-f", "-", stdin=FOREIGN_RULESET + FOREIGN_OUTPUT)
    before = kernel.outside(ns)
    assert "-A OUTPUT -j neutron-l3-agent-OUTPUT" in before[0]
    assert "-A neutron-l3-agent-OUTPUT -p udp -m udp --dport 69 -j CT --helper tftp" in before[1]
    steps = [
        MIXED,
        MIXED,
        INGRESS,
        OUTPUT,
        [Assignment(TCP, 21, "ftp"), Assignment(TCP, 21, "irc", OUT)],
        [],
        MIXED,
    ]
    for assignments in steps:
        kernel.backend.apply(ns, assignments)
        assert kernel.outside(ns) == before
        assert kernel.backend.read(ns) == kernel.backend.desired(assignments)
    if not kernel.is_nft:
        raw = kernel.save(ns, "-t", "raw")
        # Neutron's jump stays first; ours is appended after it.
        assert raw.index("-A OUTPUT -j neutron-l3-agent-OUTPUT") < raw.index(
            "-A OUTPUT -j cthm-OUTPUT"
        )
    assert kernel.backend.delete(ns) is True
    assert kernel.outside(ns) == before
    assert kernel.backend.read(ns) is None


def test_delete_removes_both_directions(kernel: Kernel, ns: str) -> None:
    kernel.backend.apply(ns, MIXED)
    assert kernel.backend.delete(ns) is True
    assert kernel.backend.read(ns) is None
    assert kernel.backend.delete(ns) is False
    if kernel.is_nft:
        assert "cthm" not in nft(ns, "list", "tables")
    else:
        for ipv6 in (False, True):
            assert "cthm-" not in kernel.save(ns, ipv6=ipv6)


# Made by hand behind cthm's back, per backend: (what is added, what read() then reports).
GARBAGE: dict[str, list[tuple[str, str]]] = {
    "nft": [
        (
            "delete chain inet cthm output\n"
            "add chain inet cthm output { type filter hook output priority raw; }\n"
            'add rule inet cthm output ct helper set tcp dport map { 21 : "irc-tcp" }\n',
            "chain output is type filter hook output prio -300 policy accept; "
            "cthm renders type filter hook output prio 0 policy accept",
        ),
        (
            "add rule inet cthm output udp dport 53 accept\n",
            "rule in chain output that cthm did not render: udp dport == 53, accept",
        ),
    ],
    "iptables": [
        (
            "*raw\n-A cthm-OUTPUT -o lo -j ACCEPT\nCOMMIT\n",
            "unexpected rule: -A cthm-OUTPUT -o lo -j ACCEPT",
        ),
        (
            "*raw\n-A PREROUTING -i lo -j cthm-OUTPUT\nCOMMIT\n",
            "foreign jump to cthm-OUTPUT: PREROUTING -i lo -j cthm-OUTPUT",
        ),
        (
            "*raw\n-D OUTPUT -j cthm-OUTPUT\nCOMMIT\n",
            "jump `OUTPUT -j cthm-OUTPUT` missing",
        ),
    ],
}


@pytest.mark.parametrize(
    ("kernel", "index"),
    [(name, index) for name in BACKENDS for index in range(len(GARBAGE[name.split("-")[0]]))],
    indirect=["kernel"],
)
def test_output_garbage_is_reported_and_repaired(kernel: Kernel, ns: str, index: int) -> None:
    change, reported = GARBAGE["nft" if kernel.is_nft else "iptables"][index]
    kernel.backend.apply(ns, MIXED)
    if kernel.is_nft:
        nft(ns, "-f", "-", stdin=change)
    else:
        kernel.restore(ns, change)
    read = kernel.backend.read(ns)
    assert read is not None
    assert reported in read.garbage, read.garbage
    assert read != kernel.backend.desired(MIXED)
    kernel.backend.apply(ns, MIXED)
    assert kernel.backend.read(ns) == kernel.backend.desired(MIXED)


def test_an_output_chain_left_empty_is_garbage_and_removed(kernel: Kernel, ns: str) -> None:
    kernel.backend.apply(ns, INGRESS)
    if kernel.is_nft:
        nft(
            ns,
            "add",
            "chain",
            "inet",
            "cthm",
            "output",
            "{ type filter hook output priority filter; }",
        )
    else:
        kernel.restore(ns, "*raw\n:cthm-OUTPUT - [0:0]\n-A OUTPUT -j cthm-OUTPUT\nCOMMIT\n")
    read = kernel.backend.read(ns)
    assert read is not None
    assert any("cthm-OUTPUT is empty" in g or "chain output is empty" in g for g in read.garbage)
    kernel.backend.apply(ns, INGRESS)
    assert kernel.backend.read(ns) == kernel.backend.desired(INGRESS)
    assert not any("output" in line.lower() for line in kernel.ours(ns))
