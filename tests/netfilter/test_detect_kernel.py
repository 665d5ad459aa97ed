"""`observe()` + `decide()` against the real kernel, in namespaces the tests create: what auto
picks for Neutron's chains, cthm's own state of either backend, or nothing; with both iptables
flavours where installed. Looking changes nothing: every namespace's whole netfilter state
(nftables, both flavours' tables in both families, the legacy table list) is the same after.
Also LegacyGuard, which keeps an iptables-legacy backend from creating legacy tables by asking."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    IptablesBackend,
    LegacyGuard,
    NamespaceNotFound,
    NftablesBackend,
    NftRunner,
    decide,
    make_runner,
    observe,
)
from cthm.netfilter.iptables import legacy_tables
from cthm.testing import NamespaceFactory, run_in_namespace

pytestmark = pytest.mark.kernel

FLAVOURS = ["nft", "legacy"]
BINDINGS = [Assignment(Protocol.TCP, 21, "ftp"), Assignment(Protocol.UDP, 69, "tftp")]

# Neutron's L3 agent's layout (raw and filter), never cthm's to touch.
NEUTRON = """\
*raw
:neutron-l3-agent-PREROUTING - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A neutron-l3-agent-PREROUTING -p tcp -m tcp --dport 2121 -j CT --helper ftp
COMMIT
*filter
:neutron-filter-top - [0:0]
-A FORWARD -j neutron-filter-top
-A neutron-filter-top -p udp -m udp --dport 69 -j ACCEPT
COMMIT
"""


def installed(flavour: str) -> bool:
    return shutil.which(f"iptables-{flavour}-restore") is not None


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if not installed(name):
        pytest.skip(f"iptables-{name} not installed")
    return name


@pytest.fixture(scope="module")
def runner() -> Iterator[NftRunner]:
    made = make_runner("auto")
    yield made
    made.close()


@pytest.fixture
def ns(netns: NamespaceFactory) -> str:
    return netns.create("det")


def restore(namespace: str, flavour: str, text: str) -> None:
    run_in_namespace(namespace, [f"iptables-{flavour}-restore", "--noflush"], input=text)


def snapshot(namespace: str) -> list[str]:
    """Everything netfilter holds in the namespace, read without creating anything (saves
    without -t print only tables that exist)."""
    parts = [run_in_namespace(namespace, ["nft", "list", "ruleset"]).stdout]
    for flavour in FLAVOURS:
        if installed(flavour):
            for family in ("iptables", "ip6tables"):
                text = run_in_namespace(namespace, [f"{family}-{flavour}-save"]).stdout
                parts.append("\n".join(x for x in text.splitlines() if not x.startswith("#")))
    for names in ("ip_tables_names", "ip6_tables_names"):
        parts.append(run_in_namespace(namespace, ["cat", f"/proc/net/{names}"]).stdout)
    return parts


def auto_in(namespace: str, runner: NftRunner | None) -> tuple[str, str, str]:
    """(backend, flavour, reason) auto picks looking at `namespace`; asserts nothing changed."""
    before = snapshot(namespace)
    choice = decide(observe([namespace], nft=runner), backend="auto", flavour="default")
    assert snapshot(namespace) == before
    return choice.backend, choice.flavour, choice.reason


def test_neutron_chains_pick_iptables_in_their_flavour(
    ns: str, flavour: str, runner: NftRunner
) -> None:
    restore(ns, flavour, NEUTRON)
    backend, used, reason = auto_in(ns, runner)
    assert (backend, used) == ("iptables", flavour)
    assert reason.startswith("other software's iptables rules in 1 of 1 router namespaces")
    assert "chain neutron-" in reason  # legacy saves list filter first


def test_neutron_chains_are_seen_without_nftables_too(ns: str) -> None:
    if not installed("nft"):
        pytest.skip("iptables-nft not installed")
    restore(ns, "nft", NEUTRON)
    assert auto_in(ns, None)[:2] == ("iptables", "nft")


def test_cthm_iptables_chains_keep_iptables_in_their_flavour(
    ns: str, flavour: str, runner: NftRunner
) -> None:
    restore(ns, flavour, NEUTRON)
    backend = IptablesBackend("subprocess", flavour=flavour)
    backend.apply(ns, BINDINGS)
    try:
        chosen, used, reason = auto_in(ns, runner)
    finally:
        backend.close()
    assert (chosen, used) == ("iptables", flavour)
    assert reason.startswith("cthm's iptables chains in 1 of 1 router namespaces")


def test_table_inet_cthm_keeps_nftables(ns: str, runner: NftRunner) -> None:
    if installed("legacy"):
        restore(ns, "legacy", NEUTRON)  # other software's iptables rules do not outweigh ours
    NftablesBackend(runner).apply(ns, BINDINGS)
    backend, _, reason = auto_in(ns, runner)
    assert backend == "nftables"
    assert reason.startswith("table inet cthm in 1 of 1 router namespaces")


def test_an_empty_namespace_is_nftables_and_stays_empty(ns: str, runner: NftRunner) -> None:
    assert auto_in(ns, runner)[0] == "nftables"
    assert legacy_tables(ns) == (frozenset(), frozenset())
    assert run_in_namespace(ns, ["nft", "list", "ruleset"]).stdout == ""


def test_many_namespaces_the_majority_of_cthm_state_wins(
    netns: NamespaceFactory, runner: NftRunner
) -> None:
    if not installed("nft"):
        pytest.skip("iptables-nft not installed")
    names = [netns.create(f"m{i}") for i in range(3)]
    iptables = IptablesBackend("subprocess", flavour="nft")
    iptables.apply(names[0], BINDINGS)
    iptables.apply(names[1], BINDINGS)
    NftablesBackend(runner).apply(names[2], BINDINGS)
    missing = netns.name("never-made")
    observation = observe([missing, *names], nft=runner)
    assert [s.namespace for s in observation.namespaces] == names  # the missing one left out
    choice = decide(observation, backend="auto", flavour="default")
    assert (choice.backend, choice.flavour) == ("iptables", "nft")
    assert "in 2 of 3 router namespaces" in choice.reason


def test_legacy_tables_of_a_missing_namespace(netns: NamespaceFactory) -> None:
    with pytest.raises(NamespaceNotFound):
        legacy_tables(netns.name("absent"))


# --- LegacyGuard ------------------------------------------------------------------------------


@pytest.fixture
def legacy() -> Iterator[IptablesBackend]:
    if not installed("legacy"):
        pytest.skip("iptables-legacy not installed")
    backend = IptablesBackend("subprocess", flavour="legacy")
    yield backend
    backend.close()


def test_asking_legacy_iptables_about_raw_creates_the_table_which_the_guard_avoids(
    netns: NamespaceFactory, legacy: IptablesBackend
) -> None:
    guarded, bare = netns.create("g1"), netns.create("g2")
    guard = LegacyGuard(legacy)
    assert guard.read(guarded) is None
    assert guard.delete(guarded) is False
    assert legacy_tables(guarded) == (frozenset(), frozenset())
    # The measured fact the guard exists for: a plain read creates the legacy raw tables.
    assert legacy.read(bare) is None
    assert legacy_tables(bare) == (frozenset({"raw"}), frozenset({"raw"}))


def test_the_guard_reads_and_deletes_where_legacy_raw_exists(
    ns: str, legacy: IptablesBackend
) -> None:
    restore(ns, "legacy", NEUTRON)
    neutron = [x for x in snapshot(ns) if "neutron" in x]
    guard = LegacyGuard(legacy)
    assert guard.flavour == "legacy"
    guard.apply(ns, BINDINGS)
    assert guard.read(ns) == guard.desired(BINDINGS)
    assert guard.delete(ns) is True
    assert guard.read(ns) is None
    assert "cthm" not in run_in_namespace(ns, ["iptables-legacy-save"]).stdout
    assert [x for x in snapshot(ns) if "neutron" in x] == neutron


def test_the_guard_never_creates_the_family_that_is_missing(
    ns: str, legacy: IptablesBackend
) -> None:
    """Another tool's IPv4 legacy raw table alone: reading both families would create the IPv6
    one, so the guard reads nothing (cthm's own chains always come with both)."""
    restore(ns, "legacy", NEUTRON)
    assert legacy_tables(ns)[1] == frozenset()
    guard = LegacyGuard(legacy)
    assert guard.read(ns) is None
    assert guard.delete(ns) is False
    assert "raw" not in legacy_tables(ns)[1]
