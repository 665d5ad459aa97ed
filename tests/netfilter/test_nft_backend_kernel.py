"""NftablesBackend against the real kernel, in namespaces the tests create, with both runners.

What is checked is the kernel's end state, read independently with the nft binary where it
matters, and that everything outside cthm's table stays byte-for-byte the same.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import (
    NamespaceNotFound,
    NftablesBackend,
    NftNotFound,
    UnsafeValue,
    desired_table,
)
from cthm.testing import NamespaceFactory

from .conftest import FOREIGN_RULESET, CountingRunner, nft, ruleset_outside_cthm

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]
ALL = [Assignment(protocol, 10000 + i, name) for i, (name, protocol) in enumerate(KINDS)]
FTP = [Assignment(TCP, 21, "ftp"), Assignment(UDP, 69, "tftp")]


@pytest.fixture
def backend(runner: CountingRunner) -> NftablesBackend:
    return NftablesBackend(runner)


@pytest.fixture
def router(netns: NamespaceFactory) -> str:
    """A router namespace that already holds another owner's firewall, NAT and helper rule."""
    namespace = netns.create("router")
    nft(namespace, "-f", "-", stdin=FOREIGN_RULESET)
    return namespace


def test_apply_then_read_is_desired(backend: NftablesBackend, router: str) -> None:
    assert backend.read(router) is None
    backend.apply(router, ALL)
    assert backend.read(router) == desired_table(ALL)
    listed = nft(router, "list", "table", "inet", "cthm")
    assert "type filter hook prerouting priority filter; policy accept;" in listed
    assert 'ct helper Q.931-tcp {\n\t\ttype "Q.931" protocol tcp' in listed
    assert 'tcp dport @ingress-Q.931-tcp ct helper set "Q.931-tcp"' in listed
    assert "set ingress-Q.931-tcp {\n\t\ttype inet_service\n\t\telements = { 10005 }" in listed


def test_every_helper_in_both_directions(backend: NftablesBackend, router: str) -> None:
    both = [*ALL, *(Assignment(a.protocol, a.port, a.helper, Direction.OUTPUT) for a in ALL)]
    backend.apply(router, both)
    assert backend.read(router) == desired_table(both)
    listed = nft(router, "list", "table", "inet", "cthm")
    assert "type filter hook output priority filter; policy accept;" in listed
    # A set and a rule per chain, one object for both.
    assert listed.count("elements = { 10005 }") == 2
    assert 'output tcp dport @output-Q.931-tcp ct helper set "Q.931-tcp"' not in listed
    assert '\t\ttcp dport @output-Q.931-tcp ct helper set "Q.931-tcp"' in listed
    assert listed.count("ct helper Q.931-tcp {") == 1


def test_apply_is_one_transaction_and_update_swaps_atomically(
    backend: NftablesBackend, runner: CountingRunner, router: str
) -> None:
    backend.apply(router, [Assignment(TCP, 2121, "ftp")])
    runner.calls.clear()
    backend.apply(router, [Assignment(TCP, 2121, "irc")])
    assert len(runner.calls) == 1
    assert backend.read(router) == desired_table([Assignment(TCP, 2121, "irc")])
    # A failing update leaves the previous table whole: nothing half-applied.
    before = nft(router, "list", "ruleset")
    with pytest.raises(NftNotFound):
        backend.apply(router, [Assignment(TCP, 2121, "ftp"), Assignment(TCP, 22, "nosuchhelper")])
    assert nft(router, "list", "ruleset") == before
    assert backend.read(router) == desired_table([Assignment(TCP, 2121, "irc")])


def test_empty_assignments_leave_an_empty_table(backend: NftablesBackend, router: str) -> None:
    backend.apply(router, FTP)
    backend.apply(router, [])
    assert backend.read(router) == desired_table([])
    assert nft(router, "list", "table", "inet", "cthm").split() == [
        "table",
        "inet",
        "cthm",
        "{",
        "}",
    ]


def test_delete_removes_exactly_our_table(backend: NftablesBackend, router: str) -> None:
    before = nft(router, "list", "ruleset")
    backend.apply(router, FTP)
    assert backend.delete(router) is True
    assert backend.read(router) is None
    assert backend.delete(router) is False
    assert nft(router, "list", "ruleset") == before
    assert "cthm" not in nft(router, "list", "tables")


def test_foreign_state_survives_every_operation(backend: NftablesBackend, router: str) -> None:
    foreign = ruleset_outside_cthm(router)
    assert "table inet filter" in foreign
    assert "table ip nat" in foreign
    assert 'tcp dport 2121 ct helper set "ftp-tcp"' in foreign
    operations: list[Callable[[], object]] = [
        lambda: backend.apply(router, FTP),
        lambda: backend.apply(router, [Assignment(TCP, 21, "Q.931")]),
        lambda: backend.available_helpers(router, [*KINDS, ("nosuchhelper", TCP)]),
        lambda: nft(router, "add", "rule", "inet", "cthm", "prerouting", "counter"),
        lambda: backend.apply(router, ALL),
        lambda: backend.read(router),
        lambda: backend.apply(router, []),
        lambda: backend.delete(router),
    ]
    for operation in operations:
        operation()
        assert ruleset_outside_cthm(router) == foreign


def test_hand_made_garbage_is_reported_and_removed(backend: NftablesBackend, router: str) -> None:
    backend.apply(router, FTP)
    nft(
        router,
        "-f",
        "-",
        stdin="add rule inet cthm prerouting udp dport 5060 counter accept\n"
        "add chain inet cthm sneaky\n"
        'add ct helper inet cthm mine { type "sip" protocol udp; l3proto inet; }\n',
    )
    table = backend.read(router)
    assert table is not None
    assert table.assignments == desired_table(FTP).assignments
    assert table.garbage == (
        "chain sneaky (cthm renders only chains prerouting and output)",
        "rule in chain prerouting that cthm did not render: udp dport == 5060, counter, accept",
        "ct helper mine is not used by any cthm rule",
        "ct helper mine should be named sip-udp (its content)",
    )
    assert table != desired_table(FTP)
    backend.apply(router, FTP)
    assert backend.read(router) == desired_table(FTP)
    assert "sneaky" not in nft(router, "list", "ruleset")


def test_chain_at_raw_priority_is_garbage(backend: NftablesBackend, router: str) -> None:
    backend.apply(router, FTP)
    nft(
        router,
        "-f",
        "-",
        stdin="delete chain inet cthm prerouting\n"
        "add chain inet cthm prerouting { type filter hook prerouting priority raw; }\n"
        'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"\n'
        'add rule inet cthm prerouting udp dport @ingress-tftp-udp ct helper set "tftp-udp"\n',
    )
    table = backend.read(router)
    assert table is not None
    assert table.assignments == desired_table(FTP).assignments
    assert table.garbage == (
        "chain prerouting is type filter hook prerouting prio -300 policy accept; "
        "cthm renders type filter hook prerouting prio 0 policy accept",
    )
    backend.apply(router, FTP)
    assert backend.read(router) == desired_table(FTP)


def test_available_helpers_is_kernel_truth_and_changes_nothing(
    backend: NftablesBackend, router: str
) -> None:
    backend.apply(router, FTP)
    before = nft(router, "list", "ruleset")
    assert backend.available_helpers(router, KINDS) == dict.fromkeys(KINDS, True)
    bogus = [("nosuchhelper", TCP), ("ftp", UDP), ("tftp", TCP), ("irc", UDP)]
    assert backend.available_helpers(router, [*KINDS, *bogus]) == {
        **dict.fromkeys(KINDS, True),
        **dict.fromkeys(bogus, False),
    }
    assert backend.available_helpers(router, []) == {}
    assert nft(router, "list", "ruleset") == before


def test_available_helpers_in_a_namespace_without_our_table(
    backend: NftablesBackend, router: str
) -> None:
    before = nft(router, "list", "ruleset")
    assert backend.available_helpers(router, [("sip", UDP), ("nosuchhelper", UDP)]) == {
        ("sip", UDP): True,
        ("nosuchhelper", UDP): False,
    }
    assert nft(router, "list", "ruleset") == before
    assert backend.read(router) is None


def test_missing_namespace(backend: NftablesBackend, netns: NamespaceFactory) -> None:
    absent = netns.name("absent")
    for call in (
        lambda: backend.read(absent),
        lambda: backend.apply(absent, FTP),
        lambda: backend.delete(absent),
        lambda: backend.available_helpers(absent, KINDS),
    ):
        with pytest.raises(NamespaceNotFound, match=f"^namespace {absent} not found$"):
            call()


def test_deleted_and_recreated_namespace(backend: NftablesBackend, netns: NamespaceFactory) -> None:
    name = netns.create("again")
    backend.apply(name, FTP)
    netns.delete(name)
    with pytest.raises(NamespaceNotFound):
        backend.read(name)
    assert netns.create("again") == name
    assert backend.read(name) is None  # the new namespace starts empty: no stale view
    backend.apply(name, [Assignment(TCP, 21, "ftp")])
    assert backend.read(name) == desired_table([Assignment(TCP, 21, "ftp")])
    assert "elements = { 21 }" in nft(name, "list", "set", "inet", "cthm", "ingress-ftp-tcp")


HOSTILE_NAMESPACES = ["../../proc/1/ns/net", "x; nft flush ruleset", "-h", "a b", "", "$(id)"]


@pytest.mark.parametrize("namespace", HOSTILE_NAMESPACES)
def test_injection_via_namespace_names_is_refused(
    backend: NftablesBackend, runner: CountingRunner, router: str, namespace: str
) -> None:
    before = nft(router, "list", "ruleset")
    for call in (
        lambda: backend.apply(namespace, FTP),
        lambda: backend.read(namespace),
        lambda: backend.delete(namespace),
    ):
        with pytest.raises(UnsafeValue):
            call()
    assert nft(router, "list", "ruleset") == before


@pytest.mark.parametrize(
    "helper",
    ['ftp" protocol tcp; l3proto inet; }\nflush ruleset\n#', "ftp\nflush ruleset", "ftp }; flush"],
)
def test_injection_via_helper_names_is_refused(
    backend: NftablesBackend, runner: CountingRunner, router: str, helper: str
) -> None:
    before = nft(router, "list", "ruleset")
    with pytest.raises(UnsafeValue):
        backend.apply(router, [Assignment(TCP, 21, helper)])
    with pytest.raises(UnsafeValue):
        backend.available_helpers(router, [(helper, TCP)])
    assert runner.calls == []  # refused before anything ran
    assert nft(router, "list", "ruleset") == before


def test_an_unchanged_table_is_not_parsed_again_and_any_change_is_seen(
    backend: NftablesBackend, router: str
) -> None:
    """Reads remember the last listing per namespace: the same text gives the same result
    without a parse (no-op resyncs), and a change made behind cthm's back — even one that
    keeps the element count — gives a different listing and so a fresh parse."""
    backend.apply(router, FTP)
    first = backend.read(router)
    assert first == desired_table(FTP)
    assert backend.read(router) is first, "an unchanged listing was parsed again"
    # Same number of elements, one helper swapped: only a real read of the kernel shows it.
    nft(
        router,
        "-f",
        "-",
        stdin="flush chain inet cthm prerouting\n"
        "delete set inet cthm ingress-ftp-tcp\n"
        'add ct helper inet cthm irc-tcp { type "irc" protocol tcp; l3proto inet; }\n'
        "add set inet cthm ingress-irc-tcp { type inet_service; elements = { 21 }; }\n"
        'add rule inet cthm prerouting tcp dport @ingress-irc-tcp ct helper set "irc-tcp"\n'
        'add rule inet cthm prerouting udp dport @ingress-tftp-udp ct helper set "tftp-udp"\n',
    )
    changed = backend.read(router)
    assert changed is not None
    assert Assignment(TCP, 21, "irc") in changed.assignments
    assert changed != first
    nft(router, "delete", "table", "inet", "cthm")
    assert backend.read(router) is None
    backend.apply(router, FTP)
    assert backend.read(router) == desired_table(FTP)
