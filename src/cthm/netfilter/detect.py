"""`backend = "auto"`: which backend (and, for "default", which iptables flavour) this node
uses, decided once at start by looking, never by changing anything.

Two halves: `observe()` reads the node (nft `list tables`, and `iptables-save` /
`ip6tables-save` of each installed flavour, in a few router namespaces; `iptables --version`),
and `decide()` is a pure function of that `Observation`, tested as a table.

How auto decides, first match wins:
  a) cthm's own state, so that a restart never migrates: the router namespaces looked at hold
     `table inet cthm` or cthm's iptables chains (`cthm-PREROUTING`/`cthm-OUTPUT` in raw, without
     `table inet cthm`); the kind more of them hold wins, nftables on a tie (a leftover of one
     failed migration must not flip the whole node back);
  b) other software's iptables rules (Neutron's `neutron-l3-agent-*`, a firewall): iptables;
  c) what can be used: nftables unless it cannot (no libnftables, no nft) and iptables can.
With flavour "default" and both flavours installed, the iptables flavour is the one whose tables
hold cthm's chains, else other software's rules, else what `iptables --version` says.

Nothing here writes. Reads never name a table (`-t`): `iptables-legacy-save -t raw` creates the
legacy raw table in the namespace it asks about (measured: /proc/net/ip_tables_names gains
"raw", and iptables-nft then warns of legacy tables), while a plain save prints only tables
that exist. For the same reason `LegacyGuard` lets an iptables-legacy backend look into a
namespace only when legacy tables exist there, which it finds out in-process (a thread that
`setns()`s and reads /proc/thread-self/net/ip_tables_names) at no process spawn.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cthm.domain import Assignment, Protocol
from cthm.netfilter.errors import NamespaceNotFound, NftError, NftOther, UnsafeValue
from cthm.netfilter.iptables import IPTABLES_FLAVOURS, IptablesBackend
from cthm.netfilter.model import KernelTable, check_namespace
from cthm.netfilter.netns import UnsafeNamespace, namespace_identity, open_namespace
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NETNS_DIR, NftRunner
from cthm.netfilter.subprocess_runner import run_in_namespace, which

log = logging.getLogger(__name__)

BACKENDS = ("nftables", "iptables", "auto")
NAMED_FLAVOURS = ("nft", "legacy")  # the flavours with their own tool names
CTHM_CHAINS = frozenset({"cthm-PREROUTING", "cthm-OUTPUT"})
BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
NEUTRON_PREFIX = "qrouter-"
DEFAULT_LIMIT = 16  # namespaces looked at: a decision, not a census (each costs a few ms)

_KERNEL_NAMES = {"nft": "nf_tables", "legacy": "legacy"}  # as `iptables --version` says them
_CLONE_NEWNET = 0x40000000
_LEGACY_NAMES = ("ip_tables_names", "ip6_tables_names")


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


def iptables_label(flavour: str) -> str:
    return "iptables" if flavour == "default" else f"iptables-{flavour}"


def decide(observation: Observation, *, backend: str, flavour: str) -> BackendChoice:
    """The backend to use for the configured `backend` ("nftables", "iptables", "auto") and
    iptables `flavour` ("default", "nft", "legacy"), given what `observe()` saw. Pure.

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
    table = ""
    cthm = False
    foreign: str | None = None
    for line in save_text.splitlines():
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            continue
        if line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            policy = rest.split(" ", 1)[0]
            if name in CTHM_CHAINS and table == "raw":
                cthm = True
            elif name not in BUILTIN_CHAINS:
                foreign = foreign or f"chain {name} in {table}"
            elif policy not in ("ACCEPT", "-"):
                foreign = foreign or f"policy {policy} on {name} in {table}"
            continue
        words = line.split()
        if len(words) < 2 or words[0] != "-A":
            continue
        if table == "raw" and (words[1] in CTHM_CHAINS or _targets_cthm(words)):
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


# --- making the observation -----------------------------------------------------------------


def tools(flavour: str) -> tuple[str, ...]:
    """The programs the iptables backend runs for `flavour`."""
    backend = IptablesBackend(flavour=flavour)
    return tuple(
        backend.tool(action, ipv6=ipv6) for ipv6 in (False, True) for action in ("save", "restore")
    )


def missing_tools() -> dict[str, tuple[str, ...]]:
    """Per flavour, the programs not found on PATH now."""
    return {f: tuple(t for t in tools(f) if shutil.which(t) is None) for f in IPTABLES_FLAVOURS}


def iptables_version_flavour(timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """ "nft" or "legacy" as `iptables --version` says ("(nf_tables)", "(legacy)"; an iptables
    that names neither predates nf_tables); None if it cannot be run. Read-only."""
    program = shutil.which("iptables")
    if program is None:
        return None
    try:
        done = subprocess.run(
            [program, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot run %s --version: %s", program, exc)
        return None
    if done.returncode != 0:
        return None
    return "nft" if "nf_tables" in done.stdout else "legacy"


def namespaces_to_observe(
    claimed: Iterable[str], *, netns_dir: Path = NETNS_DIR, limit: int = DEFAULT_LIMIT
) -> tuple[tuple[str, ...], str]:
    """Up to `limit` existing namespaces among `claimed` (routers' namespaces, read lazily, in
    order); when none exists, up to `limit` `qrouter-*` namespaces (Neutron's L3 agent's, whose
    naming cthm's routers follow), sorted. Returns them and what they are, for a person."""
    chosen: list[str] = []
    if limit > 0:
        for name in claimed:
            if name not in chosen and _exists(name, netns_dir):
                chosen.append(name)
                if len(chosen) >= limit:
                    break
    if chosen:
        return tuple(chosen), "router namespaces"
    try:
        names = sorted(e.name for e in netns_dir.iterdir() if e.name.startswith(NEUTRON_PREFIX))
    except OSError:
        names = []
    found = tuple(n for n in names if _exists(n, netns_dir))[:limit]
    return found, f"{NEUTRON_PREFIX}* namespaces"


def _exists(name: str, netns_dir: Path) -> bool:
    try:
        return (netns_dir / check_namespace(name)).exists()
    except UnsafeValue:
        return False


def observe(
    namespaces: Sequence[str],
    *,
    nft: NftRunner | None,
    scope: str = "router namespaces",
    netns_dir: Path = NETNS_DIR,
    timeout: float = DEFAULT_TIMEOUT,
) -> Observation:
    """Looks (read-only) at `namespaces` and at the tools installed. `nft` is None when
    nftables cannot be used. A namespace that vanishes meanwhile is left out."""
    missing = missing_tools()
    readable = [f for f in NAMED_FLAVOURS if not missing[f]]
    if not readable and not missing["default"]:
        readable = ["default"]
    version = iptables_version_flavour(timeout) if shutil.which("iptables") else None
    states = []
    for namespace in namespaces:
        state = observe_namespace(
            namespace, nft=nft, flavours=readable, netns_dir=netns_dir, timeout=timeout
        )
        if state is not None:
            states.append(state)
    return Observation(
        namespaces=tuple(states),
        nftables_usable=nft is not None,
        missing_tools=missing,
        version_flavour=version,
        scope=scope,
    )


def observe_namespace(
    namespace: str,
    *,
    nft: NftRunner | None,
    flavours: Sequence[str],
    netns_dir: Path = NETNS_DIR,
    timeout: float = DEFAULT_TIMEOUT,
) -> NamespaceState | None:
    """One namespace, read-only; None if it does not exist (any more) or is refused (a
    symlink, the host's namespace: see netns.py)."""
    try:
        if namespace_identity(namespace, netns_dir) is None:
            return None
    except (UnsafeNamespace, UnsafeValue):
        return None
    nft_table, ip_tables = False, True
    if nft is not None:
        try:
            tables = set(nft.run(namespace, "list tables").splitlines())
        except NamespaceNotFound:
            return None
        except NftError as exc:
            log.warning("namespace %s: cannot list nftables tables: %s", namespace, exc.message)
        else:
            nft_table = "table inet cthm" in tables
            # iptables-nft keeps its tables as nftables tables of family ip and ip6.
            ip_tables = any(t.startswith(("table ip ", "table ip6 ")) for t in tables)
    states: dict[str, IptablesState] = {}
    for flavour in flavours:
        try:
            if flavour == "nft" and not ip_tables:
                states[flavour] = IptablesState()
            else:
                states[flavour] = _read_flavour(namespace, flavour, netns_dir, timeout)
        except NamespaceNotFound:
            return None
        except (NftError, OSError) as exc:
            log.warning("namespace %s: cannot read %s rules: %s", namespace, flavour, exc)
    return NamespaceState(namespace, nft_table, states)


def _read_flavour(namespace: str, flavour: str, netns_dir: Path, timeout: float) -> IptablesState:
    present = (True, True)
    if flavour == "legacy":
        # Only families whose legacy tables exist: nothing to read (or to create) otherwise.
        v4, v6 = legacy_tables(namespace, netns_dir=netns_dir)
        present = (bool(v4), bool(v6))
    state = IptablesState()
    backend = IptablesBackend(flavour=flavour)
    for ipv6, exists in zip((False, True), present, strict=True):
        if exists:
            program = backend.tool("save", ipv6=ipv6)
            text = run_in_namespace(
                namespace,
                [which(program)],
                program=program,
                stdin=None,
                timeout=timeout,
                netns_dir=netns_dir,
            )
            state = state.merged(iptables_state(text))
    return state


# --- legacy tables, looked at in-process ----------------------------------------------------


@functools.cache
def _setns() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    setns: Callable[[int, int], int] = libc.setns
    setns.argtypes = [ctypes.c_int, ctypes.c_int]  # type: ignore[attr-defined]
    setns.restype = ctypes.c_int  # type: ignore[attr-defined]
    return setns


def legacy_tables(
    namespace: str, *, netns_dir: Path = NETNS_DIR
) -> tuple[frozenset[str], frozenset[str]]:
    """The legacy (x_tables) tables that exist in the namespace, IPv4 and IPv6, as the kernel
    lists them in /proc/net/ip{,6}_tables_names there. Read in a short-lived thread that
    `setns()`s into the namespace, so nothing is spawned and nothing is created."""
    fd, _ = open_namespace(namespace, netns_dir)  # checked: no symlink, not the host's
    outcome: list[tuple[frozenset[str], frozenset[str]] | BaseException] = []

    def peek() -> None:
        try:
            if _setns()(fd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns into {namespace}: {os.strerror(code)}")
            v4, v6 = (_table_names(f"/proc/thread-self/net/{name}") for name in _LEGACY_NAMES)
            outcome.append((v4, v6))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    # The thread ends in the other namespace: it is never reused, so nothing is switched back.
    thread = threading.Thread(target=peek, name="cthm-legacy-peek", daemon=True)
    try:
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    result = outcome[0]
    if isinstance(result, BaseException):
        raise NftOther(f"cannot look for legacy iptables tables: {result}", namespace=namespace)
    return result


def _table_names(path: str) -> frozenset[str]:
    try:
        with open(path, encoding="ascii") as handle:
            return frozenset(line.strip() for line in handle if line.strip())
    except FileNotFoundError:  # no x_tables for this family in this kernel: no legacy tables
        return frozenset()


class LegacyGuard:
    """An iptables backend of the legacy flavour that looks into (or deletes from) a namespace
    only where a legacy raw table exists: asking `iptables-legacy-save -t raw` would create
    one, with its hooks on every packet, in every namespace it is asked about (a retired
    backend is asked about every router). Writes go through unchanged."""

    def __init__(self, inner: IptablesBackend, *, netns_dir: Path = NETNS_DIR) -> None:
        self.inner = inner
        self._netns_dir = netns_dir

    @property
    def flavour(self) -> str:
        return self.inner.flavour

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def owner(self) -> str | None:
        return self.inner.owner

    def has_raw(self, namespace: str) -> bool:
        """Both families' legacy raw tables exist. The inner backend reads both, so with one
        missing it would create it; and cthm, having read both on every apply, has both."""
        v4, v6 = legacy_tables(namespace, netns_dir=self._netns_dir)
        return "raw" in v4 and "raw" in v6

    def read(self, namespace: str) -> KernelTable | None:
        return self.inner.read(namespace) if self.has_raw(namespace) else None

    def desired(self, assignments: Sequence[Assignment]) -> KernelTable:
        return self.inner.desired(assignments)

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None:
        self.inner.apply(namespace, assignments)

    def delete(self, namespace: str) -> bool:
        return self.inner.delete(namespace) if self.has_raw(namespace) else False

    def available_helpers(
        self, namespace: str, kinds: Iterable[tuple[str, Protocol]]
    ) -> dict[tuple[str, Protocol], bool]:
        return self.inner.available_helpers(namespace, kinds)

    def close(self) -> None:
        self.inner.close()
