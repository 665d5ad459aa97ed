"""Reading a namespace's iptables raw tables for netfilter.foreign, without creating any.

Every installed iptables flavour and both families: one `iptables-save -t raw` each (a
process per family and flavour, so callers read them seldom: the agent at its periodic
resync, `cthm status` once). A legacy flavour is read only where its raw table exists already:
asking `iptables-legacy-save -t raw` would create one, with hooks on every packet. Given an
nftables runner (in-process: about 0.3 ms against 10 ms an `iptables-save`), the nft flavour is
read only where iptables-nft's raw table (`table ip raw`, `table ip6 raw`) exists: the common
case, a namespace without such rules, then costs no process at all.
"""

from __future__ import annotations

import logging

from cthm.netfilter.detect import iptables_version_flavour, legacy_tables, missing_tools
from cthm.netfilter.errors import NamespaceNotFound, NftError
from cthm.netfilter.foreign import RawTable
from cthm.netfilter.iptables import IptablesBackend
from cthm.netfilter.iptables_model import TABLE
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NftRunner, namespace_path
from cthm.netfilter.subprocess_runner import run_in_namespace, which

log = logging.getLogger(__name__)

FAMILIES = ((False, "IPv4"), (True, "IPv6"))


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
