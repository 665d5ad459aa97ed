"""Reading what is in a namespace, without changing anything: for `cthm status` (once) and the
agent's periodic resync (shadow check).

- `read_cthm`: cthm's own state, whichever backend wrote it: `table inet cthm`, else cthm's
  iptables chains from the first installed flavour that holds them (both families);
- `read_raw_tables`: every installed flavour's raw table, both families, as `RawTable`s for
  netfilter.foreign;
- `find_shadows_in`: which of some assignments other software's `-j CT` rules there shadow.

Nothing is created by looking. A legacy flavour is read only where its raw table exists already
(`legacy_tables`): asking `iptables-legacy-save -t raw` would create one, with hooks on every
packet. Given an nftables runner (in-process: about 0.3 ms against 10 ms an `iptables-save`),
the nft flavour's raw tables are read only where iptables-nft's raw table (`table ip raw`,
`table ip6 raw`) exists: the common case, a namespace without such rules, then costs no process
at all. Each save is a process per family and flavour, so callers read them seldom.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cthm.domain import Assignment
from cthm.netfilter.backend import NftablesBackend
from cthm.netfilter.errors import NamespaceNotFound, NftError
from cthm.netfilter.foreign import RawTable, Shadow, find_shadows
from cthm.netfilter.iptables import IptablesBackend, LegacyGuard, legacy_tables
from cthm.netfilter.iptables_model import TABLE
from cthm.netfilter.model import KernelTable
from cthm.netfilter.netns import namespace_path
from cthm.netfilter.observation import iptables_version_flavour, missing_tools
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NftRunner
from cthm.netfilter.subprocess_runner import run_in_namespace, which

log = logging.getLogger(__name__)

FAMILIES = ((False, "IPv4"), (True, "IPv6"))


def read_cthm(namespace: str, nft: NftRunner) -> KernelTable | None:
    """cthm's state in the namespace: its nftables table (read with `nft`), else its iptables
    chains (`read_iptables`); None when there is neither. NamespaceNotFound, NftError (and
    UnsafeValue for a bad name) as the backends raise them. `nft` stays open."""
    table = NftablesBackend(nft).read(namespace)
    return table if table is not None else read_iptables(namespace)


def read_iptables(namespace: str) -> KernelTable | None:
    """cthm's iptables chains in the namespace, from the first installed flavour ("nft", then
    "legacy") that holds them; the legacy flavour only where its raw tables exist."""
    missing = missing_tools()
    for flavour in ("nft", "legacy"):
        if missing[flavour]:
            continue
        inner = IptablesBackend(flavour=flavour)
        backend = LegacyGuard(inner) if flavour == "legacy" else inner
        try:
            table = backend.read(namespace)
        finally:
            backend.close()
        if table is not None:
            return table
    return None


def find_shadows_in(
    namespace: str, assignments: Iterable[Assignment], *, nft: NftRunner | None = None
) -> list[Shadow]:
    """The assignments (kernel helper names) that other software's `-j CT` rules in the
    namespace's raw tables shadow (netfilter.foreign.find_shadows); raises as
    `read_raw_tables`."""
    return find_shadows(assignments, read_raw_tables(namespace, nft=nft))


def read_raw_tables(
    namespace: str, *, nft: NftRunner | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[RawTable, ...]:
    """The raw tables of each installed flavour and family that can be read without creating
    anything. NamespaceNotFound (or UnsafeValue) for a namespace that is not there; a table
    that cannot be read (a tool missing or failing) is left out, and logged at debug level.
    nft: a runner to look for iptables-nft's raw tables first (see the module's doc)."""
    namespace_path(namespace)
    nft_raw = _nft_raw_tables(namespace, nft)
    missing = missing_tools()
    flavours = [f for f in ("nft", "legacy") if not missing[f]]
    if not flavours and not missing["default"]:
        flavours = ["default"]
    # A lone `iptables` that is not iptables-nft writes x_tables: guarded like legacy.
    legacy_default = flavours == ["default"] and iptables_version_flavour(timeout) != "nft"
    legacy_raw: tuple[bool, bool] | None = None
    tables = []
    for flavour in flavours:
        tool = IptablesBackend(flavour=flavour).tool
        for ipv6, family in FAMILIES:
            if flavour == "legacy" or legacy_default:
                if legacy_raw is None:
                    v4, v6 = legacy_tables(namespace)
                    legacy_raw = (TABLE in v4, TABLE in v6)
                if not legacy_raw[ipv6]:
                    continue
            elif nft_raw is not None and not nft_raw[ipv6]:
                continue
            program = tool("save", ipv6=ipv6)
            try:
                # Entered by its checked descriptor: never through a symlink (netns.py).
                text = run_in_namespace(
                    namespace,
                    [which(program), "-t", TABLE],
                    program=program,
                    stdin=None,
                    timeout=timeout,
                )
            except (NftError, OSError) as exc:
                log.debug("namespace %s: cannot read %s: %s", namespace, program, exc)
                continue
            tables.append(RawTable.parse(family, flavour, text))
    return tuple(tables)


def _nft_raw_tables(namespace: str, nft: NftRunner | None) -> tuple[bool, bool] | None:
    """Whether iptables-nft's IPv4 and IPv6 raw tables exist; None: not known (read both)."""
    if nft is None:
        return None
    try:
        tables = set(nft.run(namespace, "list tables").splitlines())
    except NamespaceNotFound:
        raise
    except (NftError, OSError, RuntimeError) as exc:  # RuntimeError: a closed runner
        log.debug("namespace %s: cannot list nftables tables: %s", namespace, exc)
        return None
    return (f"table ip {TABLE}" in tables, f"table ip6 {TABLE}" in tables)
