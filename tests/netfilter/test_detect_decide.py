"""`decide()` as a table: what auto picks from an observation, which iptables flavour, and which
backends are retired; `iptables_state()` over iptables-save text; which namespaces are looked
at. Pure: no kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from cthm.netfilter.detect import (
    BackendChoice,
    BackendUnavailable,
    IptablesState,
    NamespaceState,
    Observation,
    decide,
    iptables_state,
)
from cthm.netfilter.observation import namespaces_to_observe, tools

ALL_TOOLS: dict[str, tuple[str, ...]] = {"default": (), "nft": (), "legacy": ()}
NO_TOOLS = {flavour: tools(flavour) for flavour in ALL_TOOLS}
EMPTY = IptablesState()
CTHM = IptablesState(cthm_chains=True)
NEUTRON = IptablesState(foreign="chain neutron-l3-agent-PREROUTING in raw")


def ns(
    name: str, *, nft_table: bool = False, nft: IptablesState = EMPTY, legacy: IptablesState = EMPTY
) -> NamespaceState:
    return NamespaceState(name, nft_table, {"nft": nft, "legacy": legacy})


def obs(*namespaces: NamespaceState, **kwargs: object) -> Observation:
    values: dict[str, object] = {"missing_tools": ALL_TOOLS, "version_flavour": "nft"}
    values.update(kwargs)
    return Observation(namespaces=namespaces, **values)  # type: ignore[arg-type]


def auto(observation: Observation, flavour: str = "default") -> BackendChoice:
    return decide(observation, backend="auto", flavour=flavour)


# --- a) cthm's own state is kept: a restart never migrates ----------------------------------


def test_a_table_inet_cthm_keeps_nftables_even_beside_neutron_rules() -> None:
    choice = auto(obs(ns("r1", nft_table=True, nft=NEUTRON)))
    assert (choice.backend, choice.label) == ("nftables", "nftables")
    assert "table inet cthm in 1 of 1 router namespaces" in choice.reason
    assert choice.auto


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_cthm_iptables_chains_keep_iptables_in_their_flavour(flavour: str) -> None:
    state = ns("r1", nft=CTHM) if flavour == "nft" else ns("r1", legacy=CTHM)
    choice = auto(obs(state, ns("r2")))
    assert (choice.backend, choice.flavour) == ("iptables", flavour)
    assert choice.label == f"iptables-{flavour}"
    assert "cthm's iptables chains in 1 of 2 router namespaces" in choice.reason
    assert "cthm's chains" in choice.flavour_reason
    other = "legacy" if flavour == "nft" else "nft"
    assert choice.retired_flavours == (other,)
    assert choice.retire_nftables
    assert choice.retired_labels == ("nftables", f"iptables-{other}")


def test_cthm_state_wins_over_neutron_rules_elsewhere() -> None:
    choice = auto(obs(ns("r1", legacy=NEUTRON), ns("r2", nft_table=True)))
    assert choice.backend == "nftables"


def test_the_kind_most_namespaces_hold_wins_and_a_tie_keeps_nftables() -> None:
    two_to_one = obs(ns("a", nft=CTHM), ns("b", nft=CTHM), ns("c", nft_table=True))
    assert auto(two_to_one).backend == "iptables"
    assert "table inet cthm in 1" in auto(two_to_one).reason
    tie = obs(ns("a", nft=CTHM), ns("b", nft_table=True))
    assert auto(tie).backend == "nftables"
    # A namespace holding both (a migration cut short) counts as nftables.
    both = obs(ns("a", nft_table=True, nft=CTHM))
    assert auto(both).backend == "nftables"


# --- b) other software's iptables rules: the node uses iptables -------------------------------


@pytest.mark.parametrize("flavour", ["nft", "legacy"])
def test_neutron_rules_pick_iptables_in_the_flavour_holding_them(flavour: str) -> None:
    state = ns("qr", nft=NEUTRON) if flavour == "nft" else ns("qr", legacy=NEUTRON)
    choice = auto(obs(state))
    assert (choice.backend, choice.flavour) == ("iptables", flavour)
    assert "other software's iptables rules in 1 of 1 router namespaces" in choice.reason
    assert "neutron-l3-agent-PREROUTING" in choice.reason
    assert "other software's rules" in choice.flavour_reason


# --- c) what can be used ----------------------------------------------------------------------


def test_nothing_seen_is_nftables_the_default_retiring_both_flavours() -> None:
    choice = auto(obs(ns("r1")))
    assert choice.backend == "nftables"
    assert choice.reason.endswith("nftables is the default")
    assert choice.retired_flavours == ("nft", "legacy")
    assert not choice.retire_nftables
    nothing = auto(obs())
    assert nothing.backend == "nftables"
    assert nothing.reason == "no router namespace to look at; nftables is the default"


def test_without_nftables_auto_picks_iptables() -> None:
    choice = auto(obs(ns("r1"), nftables_usable=False))
    assert (choice.backend, choice.flavour) == ("iptables", "nft")
    assert "nftables cannot be used" in choice.reason
    assert "iptables --version" in choice.flavour_reason
    assert not choice.retire_nftables  # nothing could read it
    assert choice.retired_flavours == ("legacy",)


def test_without_iptables_auto_picks_nftables_and_retires_nothing() -> None:
    choice = auto(obs(ns("r1"), missing_tools=NO_TOOLS, version_flavour=None))
    assert choice.backend == "nftables"
    assert "iptables cannot be used" in choice.reason
    assert choice.retired_labels == ()


def test_with_neither_auto_says_nftables_and_the_service_reports_it() -> None:
    choice = auto(obs(nftables_usable=False, missing_tools=NO_TOOLS, version_flavour=None))
    assert choice.backend == "nftables"


# --- the iptables flavour ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["nft", "legacy"])
def test_default_flavour_follows_iptables_version_without_evidence(version: str) -> None:
    choice = decide(obs(ns("r1"), version_flavour=version), backend="iptables", flavour="default")
    assert choice.flavour == version
    assert choice.reason == "set in the configuration"
    assert "`iptables --version` says" in choice.flavour_reason
    assert choice.default_is_legacy is (version == "legacy")


def test_a_flavour_tie_in_evidence_falls_back_to_the_version() -> None:
    observation = obs(ns("a", nft=CTHM), ns("b", legacy=CTHM), version_flavour="legacy")
    assert auto(observation).flavour == "legacy"


def test_cthm_chains_decide_the_flavour_before_neutron_rules() -> None:
    observation = obs(ns("a", nft=CTHM), ns("b", legacy=NEUTRON), ns("c", legacy=NEUTRON))
    assert auto(observation).flavour == "nft"


def test_a_configured_flavour_is_used_and_the_other_retired() -> None:
    # cthm's chains are in legacy, nft asked for: legacy is retired, so the rules migrate.
    choice = auto(obs(ns("a", legacy=CTHM)), flavour="nft")
    assert (choice.backend, choice.flavour) == ("iptables", "nft")
    assert choice.flavour_reason == "set in the configuration"
    assert choice.retired_flavours == ("legacy",)


def test_only_the_systems_tools_installed() -> None:
    only_default = {"default": (), "nft": tools("nft"), "legacy": tools("legacy")}
    nftables = auto(obs(ns("r"), missing_tools=only_default))
    assert nftables.retired_flavours == ("default",)
    assert nftables.retired_labels == ("iptables",)
    iptables = decide(obs(missing_tools=only_default), backend="iptables", flavour="default")
    assert (iptables.flavour, iptables.label) == ("default", "iptables")
    assert iptables.retired_flavours == ()  # never "default" beside itself
    assert iptables.retire_nftables


def test_uses_legacy_tables() -> None:
    legacy_default = decide(obs(version_flavour="legacy"), backend="nftables", flavour="default")
    assert legacy_default.uses_legacy_tables("legacy")
    assert legacy_default.uses_legacy_tables("default")
    assert not legacy_default.uses_legacy_tables("nft")
    nft_default = decide(obs(version_flavour="nft"), backend="nftables", flavour="default")
    assert not nft_default.uses_legacy_tables("default")


# --- configured backends and errors -----------------------------------------------------------


def test_a_configured_backend_is_kept_whatever_the_node_holds() -> None:
    observation = obs(ns("r1", legacy=CTHM))
    choice = decide(observation, backend="nftables", flavour="default")
    assert (choice.backend, choice.auto) == ("nftables", False)
    assert choice.reason == "set in the configuration"
    assert choice.retired_flavours == ("nft", "legacy")


@pytest.mark.parametrize("backend", ["nftables", "iptables", "auto"])
def test_a_configured_flavour_without_its_tools_is_refused(backend: str) -> None:
    missing = {**ALL_TOOLS, "legacy": ("iptables-legacy-restore", "ip6tables-legacy-save")}
    with pytest.raises(BackendUnavailable) as caught:
        decide(obs(missing_tools=missing), backend=backend, flavour="legacy")
    assert caught.value.message == (
        "iptables flavour legacy cannot be used: iptables-legacy-restore, "
        "ip6tables-legacy-save not found on PATH"
    )


def test_iptables_configured_without_any_iptables_is_refused() -> None:
    with pytest.raises(BackendUnavailable, match=r"iptables-save, iptables-restore, ip6tables"):
        decide(obs(missing_tools=NO_TOOLS), backend="iptables", flavour="default")


def test_unknown_values_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        decide(obs(), backend="ebtables", flavour="default")
    with pytest.raises(ValueError, match="unknown iptables flavour"):
        decide(obs(), backend="auto", flavour="xtables")


def test_describe_is_one_line_with_the_choice_its_reason_and_what_is_migrated() -> None:
    text = auto(obs(ns("qrouter-1", legacy=NEUTRON))).describe()
    assert "\n" not in text
    assert text.startswith("backend iptables-legacy (auto: other software's iptables rules")
    assert "; iptables flavour legacy: its tables hold other software's rules" in text
    assert text.endswith("; migrating away from: nftables, iptables-nft")
    configured = decide(obs(missing_tools=NO_TOOLS), backend="nftables", flavour="default")
    assert configured.describe() == "backend nftables (configured: set in the configuration)"


# --- iptables-save text -----------------------------------------------------------------------

NEUTRON_SAVE = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:neutron-l3-agent-PREROUTING - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
COMMIT
"""

CTHM_SAVE = """\
*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:cthm-OUTPUT - [0:0]
:cthm-PREROUTING - [0:0]
-A PREROUTING -j cthm-PREROUTING
-A OUTPUT -j cthm-OUTPUT
-A cthm-OUTPUT -p tcp -m tcp --dport 21 -j CT --helper ftp
-A cthm-PREROUTING -p udp -m udp --dport 69 -j CT --helper tftp
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


def test_iptables_state_of_neutron_and_cthm_text() -> None:
    assert iptables_state(NEUTRON_SAVE) == IptablesState(
        False, "chain neutron-l3-agent-PREROUTING in raw"
    )
    assert iptables_state(CTHM_SAVE) == IptablesState(True, None)
    assert iptables_state(CTHM_SAVE + NEUTRON_SAVE) == IptablesState(
        True, "chain neutron-l3-agent-PREROUTING in raw"
    )
    assert iptables_state("") == IptablesState()


@pytest.mark.parametrize(
    ("text", "foreign"),
    [
        ("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", "policy DROP on FORWARD in filter"),
        (
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n",
            "rule in filter: -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT",
        ),
        # A chain named like ours outside raw is not ours.
        ("*mangle\n:cthm-PREROUTING - [0:0]\nCOMMIT\n", "chain cthm-PREROUTING in mangle"),
        (
            "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j CT --helper ftp\nCOMMIT\n",
            "rule in raw: -A PREROUTING -p tcp -j CT --helper ftp",
        ),
    ],
)
def test_iptables_state_sees_foreign_rules(text: str, foreign: str) -> None:
    assert iptables_state(text) == IptablesState(False, foreign)


def test_merged_keeps_the_first_foreign_thing() -> None:
    first = IptablesState(False, "a")
    assert first.merged(IptablesState(True, "b")) == IptablesState(True, "a")
    assert EMPTY.merged(NEUTRON) == NEUTRON


# --- which namespaces are looked at -----------------------------------------------------------


def make(netns_dir: Path, *names: str) -> None:
    for name in names:
        (netns_dir / name).touch()


def test_stored_router_namespaces_that_exist_in_order_up_to_the_limit(tmp_path: Path) -> None:
    make(tmp_path, "b", "a", "c", "d", "qrouter-x")
    claimed = iter(["b", "missing", "b", "a", "bad/name", "c", "d"])
    found, scope = namespaces_to_observe(claimed, netns_dir=tmp_path, limit=3)
    assert found == ("b", "a", "c")
    assert scope == "router namespaces"
    assert next(claimed) == "d"  # read lazily: nothing past what was needed


def test_without_a_stored_router_namespace_qrouter_namespaces_are_looked_at(
    tmp_path: Path,
) -> None:
    make(tmp_path, "other", "qrouter-b", "qrouter-a", "qrouter-c")
    found, scope = namespaces_to_observe(["gone"], netns_dir=tmp_path, limit=2)
    assert found == ("qrouter-a", "qrouter-b")
    assert scope == "qrouter-* namespaces"
    assert namespaces_to_observe([], netns_dir=tmp_path / "absent") == ((), scope)
