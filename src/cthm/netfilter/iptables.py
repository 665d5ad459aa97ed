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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cthm.domain import Assignment, Protocol
from cthm.netfilter.backend import NftablesBackend
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
from cthm.netfilter.model import KernelTable
from cthm.netfilter.runner import DEFAULT_TIMEOUT, NETNS_DIR, namespace_path
from cthm.netfilter.subprocess_runner import run_argv, which

IPTABLES_FLAVOURS = ("default", "nft", "legacy")
_FAMILIES = (False, True)  # ipv6?


class IptablesBackend:
    def __init__(
        self,
        runner_kind: str = "auto",
        *,
        flavour: str = "default",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """`runner_kind` is the nftables runner used only for helper probes (made on first
        use); `flavour` picks `iptables-restore`, `iptables-nft-restore` or
        `iptables-legacy-restore` (and the matching save and ip6tables tools)."""
        if flavour not in IPTABLES_FLAVOURS:
            raise ValueError(f"unknown iptables flavour {flavour!r}; one of {IPTABLES_FLAVOURS}")
        self.flavour = flavour
        self.timeout = timeout
        self._runner_kind = runner_kind
        self._probe: NftablesBackend | None = None

    def tool(self, action: str, *, ipv6: bool) -> str:
        """The program name for `action` ("save" or "restore") in one family."""
        base = "ip6tables" if ipv6 else "iptables"
        infix = "" if self.flavour == "default" else f"-{self.flavour}"
        return f"{base}{infix}-{action}"

    def read(self, namespace: str) -> KernelTable | None:
        """cthm's chains in the namespace (IPv4 and IPv6); None when there is nothing of ours.

        Assignments (both directions) are the IPv4 chains'; IPv6 chains that do not hold
        exactly the IPv6-capable subset of them are reported as garbage, so the next apply
        rewrites them."""
        v4, v6 = (self._saved(namespace, ipv6=family) for family in _FAMILIES)
        if v4.empty and v6.empty:
            return None
        garbage = [*v4.garbage, *(f"ip6tables: {g}" for g in v6.garbage)]
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
        return KernelTable(v4.assignments, frozenset(), tuple(garbage))

    def desired(self, assignments: Sequence[Assignment]) -> KernelTable:
        """What `read()` returns after `apply(assignments)`."""
        return desired_iptables(assignments)

    def apply(self, namespace: str, assignments: Sequence[Assignment]) -> None:
        """Makes cthm's chains hold exactly `assignments` (IPv6: the helpers that exist for it),
        one restore per family writing only the chains that differ, none when the family is
        already exact; afterwards `read(namespace) == desired(assignments)`. No other chain or
        table changes."""
        wanted = desired_assignments(assignments)  # raises UnsafeValue before anything runs
        namespace_path(namespace, NETNS_DIR)
        for ipv6 in _FAMILIES:
            saved = self._saved(namespace, ipv6=ipv6)
            text = render_apply(for_family(wanted, ipv6=ipv6), saved)
            if text is None:
                continue  # nothing to change: no rule is rewritten
            self._run(namespace, self.tool("restore", ipv6=ipv6), ["--noflush"], text)

    def delete(self, namespace: str) -> bool:
        """Removes every jump to cthm's chains and the chains, per family; True if any
        existed."""
        found = False
        for ipv6 in _FAMILIES:
            text = render_delete(self._saved(namespace, ipv6=ipv6))
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
        return "iptables" if self.flavour == "default" else f"iptables-{self.flavour}"

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def _saved(self, namespace: str, *, ipv6: bool) -> SavedTable:
        text = self._run(namespace, self.tool("save", ipv6=ipv6), ["-t", TABLE], None)
        return parse_save(text)

    def _run(self, namespace: str, program: str, args: list[str], stdin: str | None) -> str:
        """`ip netns exec NS program args`, stdin text, no shell; failures as NftError."""
        namespace_path(namespace, NETNS_DIR)  # UnsafeValue / NamespaceNotFound first
        argv = [which("ip"), "netns", "exec", namespace, which(program), *args]
        return run_argv(
            argv, program=program, namespace=namespace, stdin=stdin, timeout=self.timeout
        )
