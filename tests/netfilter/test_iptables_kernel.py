"""IptablesBackend against the real kernel, in namespaces the tests create, with both iptables
flavours (nf_tables and legacy) when installed. End state is read with iptables-save itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import IptablesBackend, NamespaceNotFound, NftError, UnsafeValue
from cthm.testing import NamespaceFactory, run_in_namespace

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]
ALL = [Assignment(protocol, 10000 + i, name) for i, (name, protocol) in enumerate(KINDS)]
FTP = [Assignment(TCP, 21, "ftp"), Assignment(UDP, 69, "tftp")]
# Every helper in both directions, the output ones on the same ports.
BOTH = [*ALL, *(Assignment(a.protocol, a.port, a.helper, Direction.OUTPUT) for a in ALL)]

# Neutron's layout and a firewall: never cthm's to touch.
FOREIGN = """\
*raw
:neutron-l3-agent-PREROUTING - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A neutron-l3-agent-PREROUTING -p tcp -m tcp --dport 2121 -j CT --helper ftp
COMMIT
*filter
:FORWARD DROP [0:0]
:neutron-filter-top - [0:0]
-A FORWARD -j neutron-filter-top
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
-A neutron-filter-top -p udp -m udp --dport 69 -j ACCEPT
COMMIT
"""


@pytest.fixture(params=["nft", "legacy"])
def backend(request: pytest.FixtureRequest) -> Iterator[IptablesBackend]:
    flavour = str(request.param)
    if shutil.which(f"iptables-{flavour}-restore") is None:
        pytest.skip(f"iptables-{flavour} not installed")
    made = IptablesBackend("subprocess", flavour=flavour)
    yield made
    made.close()


@pytest.fixture
def ns(netns: NamespaceFactory) -> str:
    return netns.create("ipt")


def save(backend: IptablesBackend, namespace: str, *, ipv6: bool = False) -> str:
    """The whole ruleset (every table) without comment lines (they carry dates)."""
    program = backend.tool("save", ipv6=ipv6)
    text = run_in_namespace(namespace, [program]).stdout
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def outside_cthm(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "cthm-PREROUTING" not in line)


def restore(backend: IptablesBackend, namespace: str, text: str, *, ipv6: bool = False) -> None:
    program = backend.tool("restore", ipv6=ipv6)
    run_in_namespace(namespace, [program, "--noflush"], input=text)


def our_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "cthm-PREROUTING" in line]


def test_apply_then_read_equals_desired(backend: IptablesBackend, ns: str) -> None:
    assert backend.read(ns) is None
    backend.apply(ns, ALL)
    assert backend.read(ns) == backend.desired(ALL)
    assert backend.desired(ALL).helpers == frozenset()
    lines = our_lines(save(backend, ns))
    assert ":cthm-PREROUTING - [0:0]" in lines
    assert "-A PREROUTING -j cthm-PREROUTING" in lines
    assert "-A cthm-PREROUTING -p tcp -m tcp --dport 10001 -j CT --helper ftp" in lines
    assert len(lines) == 2 + len(ALL)


def test_every_helper_in_both_directions(backend: IptablesBackend, ns: str) -> None:
    backend.apply(ns, BOTH)
    assert backend.read(ns) == backend.desired(BOTH)
    lines = save(backend, ns).splitlines()
    assert "-A OUTPUT -j cthm-OUTPUT" in lines
    assert "-A cthm-OUTPUT -p tcp -m tcp --dport 10001 -j CT --helper ftp" in lines
    assert sum(line.startswith("-A cthm-OUTPUT ") for line in lines) == len(ALL)
    v6 = save(backend, ns, ipv6=True).splitlines()
    assert sum(line.startswith("-A cthm-OUTPUT ") for line in v6) == sum(
        line.startswith("-A cthm-PREROUTING ") for line in v6
    )
    assert not any(line.startswith("-A cthm-OUTPUT ") and "irc" in line for line in v6)


@pytest.mark.parametrize("assignments", [ALL, BOTH], ids=["ingress", "both directions"])
def test_reapply_changes_no_rule(
    backend: IptablesBackend, ns: str, assignments: list[Assignment]
) -> None:
    backend.apply(ns, assignments)
    first = (save(backend, ns), save(backend, ns, ipv6=True))
    handles = _nft_handles(ns) if backend.flavour == "nft" else None
    backend.apply(ns, list(reversed(assignments)))
    assert (save(backend, ns), save(backend, ns, ipv6=True)) == first
    if handles is not None:
        # With iptables-nft the rule handles prove no rule was deleted and re-added.
        assert _nft_handles(ns) == handles


def _nft_handles(namespace: str) -> str:
    done = run_in_namespace(namespace, ["nft", "-a", "list", "ruleset"])
    assert "handle" in done.stdout
    return done.stdout


def test_update_swaps_a_helper(backend: IptablesBackend, ns: str) -> None:
    backend.apply(ns, [Assignment(TCP, 5060, "sip"), *FTP])
    swapped = [Assignment(TCP, 5060, "ftp"), *FTP]
    backend.apply(ns, swapped)
    assert backend.read(ns) == backend.desired(swapped)
    lines = our_lines(save(backend, ns))
    assert "-A cthm-PREROUTING -p tcp -m tcp --dport 5060 -j CT --helper ftp" in lines
    assert not any("sip" in line for line in lines)
    backend.apply(ns, [])
    assert backend.read(ns) == backend.desired([])
    assert our_lines(save(backend, ns)) == [
        ":cthm-PREROUTING - [0:0]",
        "-A PREROUTING -j cthm-PREROUTING",
    ]


def test_delete_removes_exactly_our_chain_and_jump(backend: IptablesBackend, ns: str) -> None:
    restore(backend, ns, FOREIGN)
    restore(backend, ns, FOREIGN, ipv6=True)
    before = (save(backend, ns), save(backend, ns, ipv6=True))
    backend.apply(ns, FTP)
    assert backend.delete(ns) is True
    assert (save(backend, ns), save(backend, ns, ipv6=True)) == before
    assert backend.read(ns) is None
    assert backend.delete(ns) is False


def test_delete_in_a_fresh_namespace_leaves_only_empty_builtin_chains(
    backend: IptablesBackend, ns: str
) -> None:
    """The `raw` table itself, created by the first apply, stays: removing a table is not
    cthm's to do with iptables (another user may be about to write to it)."""
    backend.apply(ns, FTP)
    assert backend.delete(ns) is True
    for ipv6 in (False, True):
        assert save(backend, ns, ipv6=ipv6).splitlines() == [
            "*raw",
            ":PREROUTING ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "COMMIT",
        ]


def test_coexistence_keeps_foreign_rules_byte_for_byte(backend: IptablesBackend, ns: str) -> None:
    restore(backend, ns, FOREIGN)
    restore(backend, ns, FOREIGN, ipv6=True)
    before = (save(backend, ns), save(backend, ns, ipv6=True))
    assert "neutron-l3-agent-PREROUTING" in before[0]
    assert "neutron-filter-top" in before[1]

    def check() -> None:
        now = (save(backend, ns), save(backend, ns, ipv6=True))
        assert tuple(map(outside_cthm, now)) == before

    for assignments in (ALL, FTP, FTP, [Assignment(TCP, 21, "irc")], []):
        backend.apply(ns, assignments)
        check()
        assert backend.read(ns) == backend.desired(assignments)
    backend.delete(ns)
    check()


def test_ipv6_gets_only_helpers_that_exist_for_it(backend: IptablesBackend, ns: str) -> None:
    wanted = [
        Assignment(TCP, 21, "ftp"),
        Assignment(TCP, 6667, "irc"),
        Assignment(UDP, 161, "snmp"),
    ]
    backend.apply(ns, wanted)
    v6 = our_lines(save(backend, ns, ipv6=True))
    assert "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp" in v6
    assert not any("irc" in line or "snmp" in line for line in v6)
    assert any("irc" in line for line in our_lines(save(backend, ns)))
    assert backend.read(ns) == backend.desired(wanted)


def test_ipv6_mismatch_is_garbage_and_apply_repairs(backend: IptablesBackend, ns: str) -> None:
    backend.apply(ns, FTP)
    restore(backend, ns, "*raw\n:cthm-PREROUTING - [0:0]\nCOMMIT\n", ipv6=True)  # emptied
    read = backend.read(ns)
    assert read is not None
    assert read.assignments == tuple(FTP)
    assert not read.clean
    backend.apply(ns, FTP)
    assert backend.read(ns) == backend.desired(FTP)


def test_foreign_rules_in_our_chain_are_garbage_and_removed(
    backend: IptablesBackend, ns: str
) -> None:
    backend.apply(ns, FTP)
    restore(
        backend,
        ns,
        "*raw\n-A cthm-PREROUTING -p tcp -m tcp --dport 22 -j DROP\n"
        "-A PREROUTING -j cthm-PREROUTING\n-A OUTPUT -o lo -j cthm-PREROUTING\nCOMMIT\n",
    )
    read = backend.read(ns)
    assert read is not None
    assert len(read.garbage) == 3, read
    backend.apply(ns, FTP)
    assert backend.read(ns) == backend.desired(FTP)
    assert len(our_lines(save(backend, ns))) == 4


def test_kernel_refusal_is_an_nft_error_and_atomic(backend: IptablesBackend, ns: str) -> None:
    backend.apply(ns, FTP)
    before = save(backend, ns)
    with pytest.raises(NftError) as caught:
        backend.apply(ns, [Assignment(TCP, 21, "nosuchhelper")])
    assert caught.value.message
    assert save(backend, ns) == before


@pytest.mark.parametrize(
    "assignment",
    [
        Assignment(TCP, 21, "ftp\n-A PREROUTING -j DROP"),
        Assignment(TCP, 21, "ftp --helper irc"),
        Assignment(TCP, 0, "ftp"),
        Assignment(TCP, 70000, "ftp"),
    ],
)
def test_injection_refused_before_anything_runs(
    backend: IptablesBackend, ns: str, assignment: Assignment
) -> None:
    before = save(backend, ns)
    with pytest.raises(UnsafeValue):
        backend.apply(ns, [assignment])
    assert save(backend, ns) == before
    assert backend.read(ns) is None


def test_unsafe_or_missing_namespace(backend: IptablesBackend, netns: NamespaceFactory) -> None:
    with pytest.raises(UnsafeValue):
        backend.apply("../x; reboot", FTP)
    missing = netns.name("never-made")
    with pytest.raises(NamespaceNotFound):
        backend.read(missing)
    with pytest.raises(NamespaceNotFound):
        backend.apply(missing, FTP)
    with pytest.raises(NamespaceNotFound):
        backend.delete(missing)


def test_available_helpers(backend: IptablesBackend, ns: str) -> None:
    found = backend.available_helpers(ns, [("ftp", TCP), ("nosuchhelper", TCP)])
    assert found == {("ftp", TCP): True, ("nosuchhelper", TCP): False}


def test_tools_exist_for_both_families(backend: IptablesBackend) -> None:
    for ipv6 in (False, True):
        for action in ("save", "restore"):
            assert shutil.which(backend.tool(action, ipv6=ipv6)), backend.tool(action, ipv6=ipv6)


OWNER_A = "6f1d2c3b-0000-4000-8000-00000000000a"
OWNER_B = "6f1d2c3b-0000-4000-8000-00000000000b"


def test_chains_carry_the_deployment_identity(backend: IptablesBackend, ns: str) -> None:
    """Each chain of both families starts with `-m comment --comment cthm:<id>`; an unmarked
    chain set (a cthm before identities) is marked by the next apply without moving the jump."""
    unmarked = IptablesBackend("subprocess", flavour=backend.flavour)
    mine = IptablesBackend("subprocess", flavour=backend.flavour, owner=OWNER_A)
    try:
        restore(backend, ns, FOREIGN)
        unmarked.apply(ns, BOTH)
        assert mine.read(ns) == unmarked.desired(BOTH) != mine.desired(BOTH)
        jumps_before = [line for line in save(backend, ns).splitlines() if "-j cthm-" in line]
        mine.apply(ns, BOTH)
        assert mine.read(ns) == mine.desired(BOTH)
        for ipv6 in (False, True):
            text = save(backend, ns, ipv6=ipv6)
            for chain in ("cthm-PREROUTING", "cthm-OUTPUT"):
                rules = [line for line in text.splitlines() if line.startswith(f"-A {chain} ")]
                assert rules[0] == f'-A {chain} -m comment --comment "cthm:{OWNER_A}"'
        jumps_after = [line for line in save(backend, ns).splitlines() if "-j cthm-" in line]
        assert jumps_after == jumps_before
        theirs = IptablesBackend("subprocess", flavour=backend.flavour, owner=OWNER_B)
        assert theirs.read(ns) == mine.desired(BOTH)  # any reader sees whose it is
        theirs.close()
    finally:
        unmarked.close()
        mine.close()
