"""`backend = "auto"`: which backend (and, for "default", which iptables flavour) this node
uses, decided once at start by looking, never by changing anything.

This module is the pure half: `decide()` is a function of an `Observation`, tested as a table;
`iptables_state()` says what one `iptables-save` text holds. observation.py makes the observation
(reads namespaces and the tools installed).

How auto decides, first match wins:
  a) cthm's own state, so that a restart never migrates: the router namespaces looked at hold
     `table inet cthm` or cthm's iptables chains (`cthm-PREROUTING`/`cthm-OUTPUT` in raw, without
     `table inet cthm`); the kind more of them hold wins, nftables on a tie (a leftover of one
     failed migration must not flip the whole node back);
  b) other software's iptables rules (Neutron's `neutron-l3-agent-*`, a firewall): iptables;
  c) what can be used: nftables unless it cannot (no libnftables, no nft) and iptables can.
With flavour "default" and both flavours installed, the iptables flavour is the one whose tables
hold cthm's chains, else other software's rules, else what `iptables --version` says.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cthm.netfilter.iptables import IPTABLES_FLAVOURS, iptables_label
from cthm.netfilter.iptables_model import CHAIN_BY_NAME
from cthm.netfilter.iptables_save import declared_policy, save_lines

BACKENDS = ("nftables", "iptables", "auto")
NAMED_FLAVOURS = ("nft", "legacy")  # the flavours with their own tool names
CTHM_CHAINS = frozenset(CHAIN_BY_NAME)
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})

_KERNEL_NAMES = {"nft": "nf_tables", "legacy": "legacy"}  # as `iptables --version` says them


class BackendUnavailable(Exception):
    """The configured backend or iptables flavour cannot be used on this machine."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the observation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IptablesState:
    """What one iptables flavour's tables hold in one namespace (IPv4 and IPv6 together).

    foreign: the first thing seen that is not cthm's (a chain, a rule, a policy), or None."""

    cthm_chains: bool = False
    foreign: str | None = None

    def merged(self, other: IptablesState) -> IptablesState:
        return IptablesState(self.cthm_chains or other.cthm_chains, self.foreign or other.foreign)


@dataclass(frozen=True, slots=True)
class NamespaceState:
    """One namespace: whether it holds `table inet cthm`, and per iptables flavour read
    ("nft", "legacy", or "default" where no named flavour is installed) what its tables hold."""

    namespace: str
    nft_table: bool = False
    iptables: Mapping[str, IptablesState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything `decide()` needs.

    missing_tools: per flavour ("default", "nft", "legacy"), the save/restore programs it lacks
    on PATH (empty: usable). version_flavour: "nft" or "legacy" as `iptables --version` says,
    None if unknown. scope: what the namespaces are, for a person ("router namespaces")."""

    namespaces: tuple[NamespaceState, ...] = ()
    nftables_usable: bool = True
    missing_tools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    version_flavour: str | None = None
    scope: str = "router namespaces"

    def usable(self, flavour: str) -> bool:
        return flavour in self.missing_tools and not self.missing_tools[flavour]

    @property
    def named_flavours(self) -> tuple[str, ...]:
        """The installed flavours that have their own tool names, in NAMED_FLAVOURS order."""
        return tuple(f for f in NAMED_FLAVOURS if self.usable(f))


# --- the decision ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """backend: "nftables" or "iptables"; flavour: the iptables flavour to use (meaningful when
    backend is iptables); retired_flavours / retire_nftables: the other backends this node may
    have used, whose rules the agent removes once ours are verified (a switch migrates);
    default_is_legacy: the system's plain `iptables-*` tools are the legacy ones."""

    backend: str
    flavour: str
    reason: str
    flavour_reason: str = ""
    retired_flavours: tuple[str, ...] = ()
    retire_nftables: bool = False
    auto: bool = False
    default_is_legacy: bool = False

    @property
    def label(self) -> str:
        """ "nftables", "iptables-nft", "iptables-legacy" or "iptables" (the system's)."""
        return self.backend if self.backend == "nftables" else iptables_label(self.flavour)

    @property
    def retired_labels(self) -> tuple[str, ...]:
        nft = ("nftables",) if self.retire_nftables else ()
        return (*nft, *(iptables_label(f) for f in self.retired_flavours))

    def uses_legacy_tables(self, flavour: str) -> bool:
        """Whether the tools of `flavour` write the legacy (x_tables) tables."""
        return flavour == "legacy" or (flavour == "default" and self.default_is_legacy)

    def describe(self) -> str:
        """One line for the log and the operator."""
        how = "auto" if self.auto else "configured"
        text = f"backend {self.label} ({how}: {self.reason})"
        if self.backend == "iptables" and self.flavour_reason:
            text += f"; iptables flavour {self.flavour}: {self.flavour_reason}"
        retired = self.retired_labels
        text += f"; migrating away from: {', '.join(retired)}" if retired else ""
        return text


def decide(observation: Observation, *, backend: str, flavour: str) -> BackendChoice:
    """The backend to use for the configured `backend` ("nftables", "iptables", "auto") and
    iptables `flavour` ("default", "nft", "legacy"), given what `observation.observe()` saw. Pure.

    BackendUnavailable when a flavour named in the configuration lacks its tools, or when
    iptables is configured and none of its tools can be used."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if flavour not in IPTABLES_FLAVOURS:
        raise ValueError(f"unknown iptables flavour {flavour!r}; one of {IPTABLES_FLAVOURS}")
    obs = observation
    if flavour != "default" and not obs.usable(flavour):
        raise BackendUnavailable(
            f"iptables flavour {flavour} cannot be used: {_missing(obs, flavour)} not found on PATH"
        )
    chosen, reason = _auto(obs) if backend == "auto" else (backend, "set in the configuration")
    used, flavour_reason = _flavour(obs, flavour)
    if chosen == "iptables" and not obs.usable(used):
        raise BackendUnavailable(
            f"the iptables backend cannot be used: {_missing(obs, used)} not found on PATH"
        )
    named = obs.named_flavours
    if chosen == "nftables":
        retired = named or (("default",) if obs.usable("default") else ())
        retire_nftables = False
    else:
        # "default" left unresolved may be either named flavour: retiring one could be us.
        retired = tuple(f for f in named if f != used) if used in named else ()
        retire_nftables = obs.nftables_usable
    return BackendChoice(
        backend=chosen,
        flavour=used,
        reason=reason,
        flavour_reason=flavour_reason,
        retired_flavours=retired,
        retire_nftables=retire_nftables,
        auto=backend == "auto",
        default_is_legacy=obs.version_flavour == "legacy",
    )


def _missing(obs: Observation, flavour: str) -> str:
    missing = obs.missing_tools.get(flavour) or (f"{iptables_label(flavour)} tools",)
    return ", ".join(missing)


def _auto(obs: Observation) -> tuple[str, str]:
    seen = len(obs.namespaces)
    where = f"{seen} {obs.scope} looked at"
    nft = [s.namespace for s in obs.namespaces if s.nft_table]
    ipt = [
        s.namespace
        for s in obs.namespaces
        if not s.nft_table and any(state.cthm_chains for state in s.iptables.values())
    ]
    chains, table = "cthm's iptables chains", "table inet cthm"
    if len(ipt) > len(nft):
        other = f", {table} in {len(nft)}" if nft else ""
        return "iptables", f"{chains} in {len(ipt)} of {where} (e.g. {ipt[0]}){other}"
    if nft:
        other = f", {chains} in {len(ipt)}" if ipt else ""
        return "nftables", f"{table} in {len(nft)} of {where} (e.g. {nft[0]}){other}"
    foreign = [
        (s.namespace, state.foreign)
        for s in obs.namespaces
        for state in s.iptables.values()
        if state.foreign is not None
    ]
    if foreign and any(obs.usable(f) for f in IPTABLES_FLAVOURS):
        namespace, what = foreign[0]
        count = len({name for name, _ in foreign})
        return "iptables", (
            f"other software's iptables rules in {count} of {where} (e.g. {namespace}: {what})"
        )
    nothing = f"no cthm state and no other software's iptables rules in {where}"
    if not seen:
        nothing = "no router namespace to look at"
    if not obs.nftables_usable and any(obs.usable(f) for f in IPTABLES_FLAVOURS):
        return "iptables", f"{nothing}; nftables cannot be used (no libnftables, no nft)"
    if not any(obs.usable(f) for f in IPTABLES_FLAVOURS):
        return "nftables", f"{nothing}; iptables cannot be used (its tools are not on PATH)"
    return "nftables", f"{nothing}; nftables is the default"


def _flavour(obs: Observation, flavour: str) -> tuple[str, str]:
    """The iptables flavour to use, and why."""
    if flavour != "default":
        return flavour, "set in the configuration"
    named = obs.named_flavours
    if len(named) == 2:
        for label, has in (
            ("cthm's chains", lambda s: s.cthm_chains),
            ("other software's rules", lambda s: s.foreign is not None),
        ):
            counts = _count(obs, has)
            if counts:
                (first, top), *rest = counts.most_common()
                if not rest or rest[0][1] < top:
                    return first, f"its tables hold {label} in {top} of the {obs.scope} looked at"
    if obs.version_flavour in named:
        version = obs.version_flavour
        return str(version), f"`iptables --version` says {_KERNEL_NAMES[str(version)]}"
    if obs.usable("default") or not named:
        return "default", "the system's iptables tools"
    return named[0], "the only flavour installed"


def _count(obs: Observation, has: Callable[[IptablesState], bool]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for state in obs.namespaces:
        for flavour, seen in state.iptables.items():
            if flavour in NAMED_FLAVOURS and has(seen):
                counts[flavour] += 1
    return counts


# --- reading iptables-save output -----------------------------------------------------------


def iptables_state(save_text: str) -> IptablesState:
    """What a whole `iptables-save` (every table, one family) holds: cthm's chains in raw, and
    the first thing that is not cthm's. Built-in chains with an ACCEPT policy and no rules are
    nothing: a save prints them for every table that exists."""
    cthm = False
    foreign: str | None = None
    for table, name, line, words in save_lines(save_text):
        if words is None:
            policy = declared_policy(line)
            if name in CTHM_CHAINS and table == "raw":
                cthm = True
            elif name not in BUILTIN_CHAINS:
                foreign = foreign or f"chain {name} in {table}"
            elif policy not in ("ACCEPT", "-"):
                foreign = foreign or f"policy {policy} on {name} in {table}"
            continue
        if table == "raw" and (name in CTHM_CHAINS or _targets_cthm(words)):
            continue
        foreign = foreign or f"rule in {table}: {_shorten(line)}"
    return IptablesState(cthm, foreign)


def _targets_cthm(words: list[str]) -> bool:
    return any(
        word in ("-j", "-g", "--jump", "--goto") and following in CTHM_CHAINS
        for word, following in itertools.pairwise(words)
    )


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
