"""What `backend = "auto"` looks at (read-only): the iptables tools installed, what
`iptables --version` says, and, in a few router namespaces, nft's tables and `iptables-save` /
`ip6tables-save` of each installed flavour. The result is detect.py's `Observation`.

Nothing here writes. Reads never name a table (`-t`): `iptables-legacy-save -t raw` creates the
legacy raw table in the namespace it asks about (measured: /proc/net/ip_tables_names gains
"raw", and iptables-nft then warns of legacy tables), while a plain save prints only tables
that exist. For the same reason the legacy flavour is read only where legacy tables exist,
which `legacy_tables` (iptables.py) finds out in-process at no process spawn.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from cthm.netfilter.detect import (
    NAMED_FLAVOURS,
    IptablesState,
    NamespaceState,
    Observation,
    iptables_state,
)
from cthm.netfilter.errors import NamespaceNotFound, NftError, UnsafeValue
from cthm.netfilter.iptables import IPTABLES_FLAVOURS, IptablesBackend, legacy_tables
from cthm.netfilter.model import check_namespace
from cthm.netfilter.netns import NETNS_DIR, UnsafeNamespace, namespace_identity
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NftRunner
from cthm.netfilter.subprocess_runner import run_in_namespace, which

log = logging.getLogger(__name__)

NEUTRON_PREFIX = "qrouter-"
DEFAULT_LIMIT = 16  # namespaces looked at: a decision, not a census (each costs a few ms)


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
