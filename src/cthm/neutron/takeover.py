"""Taking over Neutron's conntrack helpers when the L3 agent starts, so that no port is ever
without its helper during the migration.

The L3 agent initializes its extensions (init_host -> init_extension_manager) before it
processes any router; its first ri.process() of a router then applies Neutron's
IptablesManager, which drops the `neutron-l3-agent-cth*` chains Neutron's own extension left
(no longer loaded, nothing declares them), and only afterwards calls the extensions'
add_router. So at initialize, before returning, cthm copies those chains' rules
(`-p P --dport N -j CT --helper H`) of every router namespace of this host into its own table
(same backend and owner as the extension's), verified; the router's first add_router replaces
that copy with the server's truth. A taken-over namespace whose router this agent is not given
within `[cthm] takeover_grace` seconds loses cthm's table again (the extension's timer).

A namespace that already holds cthm's state (this agent ran cthm before, or another deployment
owns the table there) is left as it is; one that cannot be read or written is logged and
skipped. Every subprocess has a timeout (migration.TIMEOUT).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cthm.agent import KernelBackend
from cthm.domain import (
    Assignment,
    Direction,
    HelperCatalog,
    InvalidInput,
    parse_protocol,
    validate_port,
)
from cthm.netfilter import NETNS_DIR, NftError, UnsafeValue
from cthm.neutron.migration import NeutronRules, neutron_chains

log = logging.getLogger(__name__)

ROUTER_PREFIXES = ("qrouter-", "snat-")
_RULE = re.compile(r"-A (?P<chain>\S+) (?P<spec>.*)")
_CT_HELPER = re.compile(
    r"^-p (?P<proto>\S+)(?: -m \S+)* --dport (?P<port>\d+) -j CT --helper (?P<helper>\S+)$"
)


def router_id_of(namespace: str) -> str | None:
    """The router id in a Neutron router namespace's name (`qrouter-<id>`, `snat-<id>`)."""
    for prefix in ROUTER_PREFIXES:
        if namespace.startswith(prefix) and len(namespace) > len(prefix):
            return namespace[len(prefix) :]
    return None


def candidates(patterns: Iterable[str], netns_dir: Path = NETNS_DIR) -> list[str]:
    """The router namespaces in netns_dir matching any of the patterns, sorted."""
    patterns = list(patterns)
    try:
        names = [entry.name for entry in netns_dir.iterdir()]
    except OSError as exc:
        log.warning("cannot list network namespaces in %s: %s", netns_dir, exc)
        return []
    return sorted(
        name
        for name in names
        if router_id_of(name) is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)
    )


@dataclass(frozen=True, slots=True)
class Found:
    """What Neutron's helper chains in one namespace ask for, as cthm's assignments (ingress),
    and the rules cthm refuses (its catalog does not know the helper, or a port is claimed
    twice with different helpers)."""

    assignments: tuple[Assignment, ...]
    refused: tuple[str, ...]


def neutron_assignments(saved: Iterable[str], catalog: HelperCatalog) -> Found:
    """The assignments of Neutron's helper chains in `iptables-save -t raw` texts (both
    families: Neutron writes each helper in both; cthm's catalog decides the families)."""
    chosen: dict[tuple[str, int], Assignment] = {}
    refused: list[str] = []
    for text in saved:
        chains = neutron_chains(text)
        in_raw = False
        for line in text.splitlines():
            if line.startswith("*"):
                in_raw = line == "*raw"
            rule = _RULE.match(line) if in_raw else None
            if rule is None or rule["chain"] not in chains:
                continue
            match = _CT_HELPER.match(rule["spec"])
            if match is None:
                refused.append(line)
                continue
            try:
                protocol = parse_protocol(match["proto"])
                port = validate_port(int(match["port"]))
                helper = catalog.resolve(match["helper"], protocol).name
            except InvalidInput:
                refused.append(line)
                continue
            assignment = Assignment(protocol, port, helper, Direction.INGRESS)
            key = (protocol.value, port)
            if chosen.setdefault(key, assignment) != assignment:
                refused.append(line)
    return Found(tuple(sorted(chosen.values())), tuple(dict.fromkeys(refused)))


class Takeover:
    """Writes cthm's rules for Neutron's helper chains into router namespaces (run), and
    remembers which it wrote (taken: namespace -> router id) for the grace removal."""

    def __init__(self, backend: KernelBackend, catalog: HelperCatalog, rules: NeutronRules) -> None:
        self._backend = backend
        self._catalog = catalog
        self._rules = rules
        self.taken: dict[str, str] = {}

    def run(self, patterns: Iterable[str], netns_dir: Path = NETNS_DIR) -> Mapping[str, str]:
        """Every candidate namespace taken over where it has Neutron helper chains; returns
        those taken (namespace -> router id)."""
        for namespace in candidates(patterns, netns_dir):
            try:
                self._take(namespace)
            except (NftError, UnsafeValue, OSError) as exc:
                log.warning(
                    "namespace %s: Neutron's conntrack helpers not taken over: %s", namespace, exc
                )
        return dict(self.taken)

    def _take(self, namespace: str) -> None:
        found = neutron_assignments(self._rules.saved(namespace).values(), self._catalog)
        for line in found.refused:
            log.warning("namespace %s: Neutron's rule not taken over: %s", namespace, line)
        if not found.assignments:
            return
        if self._backend.read(namespace) is not None:
            log.info(
                "namespace %s: already holds cthm's conntrack helper rules: kept as they are",
                namespace,
            )
            return
        self._backend.apply(namespace, found.assignments)
        if self._backend.read(namespace) != self._backend.desired(found.assignments):
            log.warning(
                "namespace %s: cthm's copy of Neutron's conntrack helpers does not read back "
                "as written; the router's first sync rewrites it",
                namespace,
            )
        router_id = router_id_of(namespace)
        assert router_id is not None  # candidates() holds only router namespaces
        self.taken[namespace] = router_id
        log.info(
            "namespace %s: took over Neutron's conntrack helpers until router %s is synced: %s",
            namespace,
            router_id,
            ", ".join(f"{a.protocol}/{a.port} {a.helper}" for a in found.assignments),
        )
