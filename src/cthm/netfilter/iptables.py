"""The iptables backend: the NftablesBackend interface over `iptables-restore --noflush` and
`iptables-save`, for nodes whose operators (and Neutron) use iptables.

cthm owns two chains in the `raw` table: `cthm-PREROUTING` (ingress), jumped to from
`PREROUTING` by one rule, and `cthm-OUTPUT` (traffic the namespace originates), jumped to from
`OUTPUT`, which exists only while output has assignments; nothing else is read or written.
Each family's write is one restore (atomic per table); IPv4 is written first, then IPv6 with the
IPv6-capable helpers only, so the two families are not one transaction between them. The same
process runs both families: `iptables-*` and `ip6tables-*` of the flavour chosen ("default"
follows the system's alternatives, or "nft", "legacy").

Helper availability is probed with nftables' dry run (`nft -c`): `iptables-restore --test`
never reaches the kernel and accepts helper types the kernel lacks.

The legacy flavour is wrapped in `LegacyGuard`, which looks into a namespace only where legacy
tables exist (`legacy_tables`, read in-process): asking `iptables-legacy-save -t raw` would
create the legacy raw table there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cthm.domain import Assignment, Protocol
from cthm.netfilter.backend import NftablesBackend
from cthm.netfilter.errors import NftError, NftOther, UnsafeValue
from cthm.netfilter.factory import make_runner
from cthm.netfilter.iptables_model import TABLE, SavedTable
from cthm.netfilter.iptables_parse import parse_save
from cthm.netfilter.iptables_render import (
    CHAIN,
    desired_assignments,
    desired_iptables,
    for_family,
    render_apply,
    render_delete,
)
from cthm.netfilter.model import KernelTable, check_owner
from cthm.netfilter.netns import NETNS_DIR, namespace_path, peek
from cthm.netfilter.runner import DEFAULT_TIMEOUT
from cthm.netfilter.subprocess_runner import run_in_namespace, which

IPTABLES_FLAVOURS = ("default", "nft", "legacy")
_FAMILIES = (False, True)  # ipv6?
_LEGACY_NAMES = ("ip_tables_names", "ip6_tables_names")


def iptables_label(flavour: str) -> str:
    """For logs and the operator: `iptables` (the system's), `iptables-nft`, `iptables-legacy`."""
    return "iptables" if flavour == "default" else f"iptables-{flavour}"


class IptablesBackend:
    def __init__(
        self,
        runner_kind: str = "auto",
        *,
        flavour: str = "default",
        timeout: float = DEFAULT_TIMEOUT,
        owner: str | None = None,
    ) -> None:
        """`runner_kind` is the nftables runner used only for helper probes (made on first
        use); `flavour` picks `iptables-restore`, `iptables-nft-restore` or
        `iptables-legacy-restore` (and the matching save and ip6tables tools); `owner` is the
        deployment id every chain written is marked with (None: unmarked)."""
        if flavour not in IPTABLES_FLAVOURS:
            raise ValueError(f"unknown iptables flavour {flavour!r}; one of {IPTABLES_FLAVOURS}")
        self.flavour = flavour
        self.owner = check_owner(owner) if owner is not None else None
        self.timeout = timeout
        self._runner_kind = runner_kind
        self._probe: NftablesBackend | None = None
        # The IPv6 save runs beside the IPv4 one: each is a process (two with nsenter)
        # that mostly waits, and every reconcile reads both families.
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def tool(self, action: str, *, ipv6: bool) -> str:
        """The program name for `action` ("save" or "restore") in one family."""
        base = "ip6tables" if ipv6 else "iptables"
        infix = "" if self.flavour == "default" else f"-{self.flavour}"
        return f"{base}{infix}-{action}"

    def read(self, namespace: str) -> KernelTable | None:
        """cthm's chains in the namespace (IPv4 and IPv6); None when there is nothing of ours.

        Assignments (both directions) are the IPv4 chains'; IPv6 chains that do not hold
        exactly the IPv6-capable subset of them are reported as garbage, so the next apply
        rewrites them. The owner is the identity every existing chain of both families is
        marked with; None when one is unmarked or they differ (not provably one deployment's)."""
        v4, v6 = self._saved_both(namespace)
        if v4.empty and v6.empty:
            return None
        garbage = [*v4.garbage, *(f"ip6tables: {g}" for g in v6.garbage)]
        owners = v4.owners | v6.owners
        owner = next(iter(owners)) if len(owners) == 1 else None
        if len(owners - {None}) > 1:
            shown = ", ".join(sorted(o for o in owners if o is not None))
            garbage.append(f"chains marked by different deployments: {shown}")
        if not v4.present:
            garbage.append(f"iptables: chain {CHAIN} missing in table {TABLE}")
        if not v6.present:
            garbage.append(f"ip6tables: chain {CHAIN} missing in table {TABLE}")
        expected6 = for_family(v4.assignments, ipv6=True)
        if v6.present and v6.assignments != expected6:
            extra = sorted(set(v6.assignments) - set(expected6))
            missing = sorted(set(expected6) - set(v6.assignments))
            garbage.append(
                f"ip6tables: {len(extra)} rule(s) not in iptables, "
                f"{len(missing)} missing (e.g. {(extra or missing)[0]})"
            )
        return KernelTable(v4.assignments, frozenset(), tuple(garbage), owner)

    def desired(self, assignments: Sequence[Assignment]) -> KernelTable:
        """What `read()` returns after `apply(assignments)`."""
        return desired_iptables(assignments, self.owner)

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None:
        """Makes cthm's chains hold exactly `assignments` (IPv6: the helpers that exist for it),
        one restore per family writing only the chains that differ, none when the family is
        already exact; afterwards `read(namespace) == desired(assignments)`. No other chain or
        table changes."""
        wanted = desired_assignments(assignments)  # raises UnsafeValue before anything runs
        namespace_path(namespace, NETNS_DIR)
        # Both families read at once; restored one after the other (IPv4 first, as always), so
        # an IPv4 failure still leaves IPv6 untouched.
        for ipv6, saved in zip(_FAMILIES, self._saved_both(namespace), strict=True):
            text = render_apply(for_family(wanted, ipv6=ipv6), saved, self.owner)
            if text is None:
                continue  # nothing to change: no rule is rewritten
            self._run(namespace, self.tool("restore", ipv6=ipv6), ["--noflush"], text)

    def update(
        self, namespace: str, verified: object, assignments: Sequence[Assignment]
    ) -> KernelTable | None:
        """Never a partial sync: the compatibility path stays full-only (the agent applies)."""
        return None

    def delete(self, namespace: str) -> bool:
        """Removes every jump to cthm's chains and the chains, per family; True if any
        existed."""
        found = False
        for ipv6, saved in zip(_FAMILIES, self._saved_both(namespace), strict=True):
            text = render_delete(saved)
            if text is not None:
                found = True
                self._run(namespace, self.tool("restore", ipv6=ipv6), ["--noflush"], text)
        return found

    def available_helpers(
        self, namespace: str, kinds: Iterable[tuple[str, Protocol]]
    ) -> dict[tuple[str, Protocol], bool]:
        """Whether this kernel has each (helper type, protocol), by nftables dry runs."""
        if self._probe is None:
            self._probe = NftablesBackend(make_runner(self._runner_kind, timeout=self.timeout))
        return self._probe.available_helpers(namespace, kinds)

    @property
    def label(self) -> str:
        """For logs: `iptables`, or `iptables-nft`/`iptables-legacy` for a named flavour."""
        return iptables_label(self.flavour)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _saved_both(self, namespace: str) -> tuple[SavedTable, SavedTable]:
        """(IPv4, IPv6) saves of the raw table, taken concurrently; the IPv4 error first."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="cthm-iptables-save")
            v6 = self._pool.submit(self._saved, namespace, ipv6=True)
        try:
            v4 = self._saved(namespace, ipv6=False)
        finally:
            error6 = v6.exception()  # always waited for: no save outlives its call
        if error6 is not None:
            raise error6
        return v4, v6.result()

    def _saved(self, namespace: str, *, ipv6: bool) -> SavedTable:
        text = self._run(namespace, self.tool("save", ipv6=ipv6), ["-t", TABLE], None)
        return parse_save(text)

    def _run(self, namespace: str, program: str, args: list[str], stdin: str | None) -> str:
        """`program args` in the namespace (entered by its checked descriptor, see
        netns.py), stdin text, no shell; failures as NftError."""
        return run_in_namespace(
            namespace,
            [which(program), *args],
            program=program,
            stdin=stdin,
            timeout=self.timeout,
            netns_dir=NETNS_DIR,
        )


# --- the legacy flavour: looked at only where its tables exist -------------------------------


def legacy_tables(
    namespace: str, *, netns_dir: Path = NETNS_DIR
) -> tuple[frozenset[str], frozenset[str]]:
    """The legacy (x_tables) tables that exist in the namespace, IPv4 and IPv6, as the kernel
    lists them in /proc/net/ip{,6}_tables_names there. Read in a short-lived thread that
    `setns()`s into the namespace (netns.peek), so nothing is spawned and nothing is created."""

    def read() -> tuple[frozenset[str], frozenset[str]]:
        v4, v6 = (_table_names(f"/proc/thread-self/net/{name}") for name in _LEGACY_NAMES)
        return v4, v6

    try:
        return peek(namespace, read, netns_dir)
    except (NftError, UnsafeValue):  # the namespace itself: absent, refused, a bad name
        raise
    except Exception as exc:  # in the thread: setns refused, /proc unreadable
        message = f"cannot look for legacy iptables tables: {exc}"
        raise NftOther(message, namespace=namespace) from exc


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

    def update(
        self, namespace: str, verified: object, assignments: Sequence[Assignment]
    ) -> KernelTable | None:
        return None  # as the iptables backend: full sync only

    def delete(self, namespace: str) -> bool:
        return self.inner.delete(namespace) if self.has_raw(namespace) else False

    def available_helpers(
        self, namespace: str, kinds: Iterable[tuple[str, Protocol]]
    ) -> dict[tuple[str, Protocol], bool]:
        return self.inner.available_helpers(namespace, kinds)

    def close(self) -> None:
        self.inner.close()
