"""Migrating a router from Neutron's conntrack-helper extension: its chains go once cthm's own
rules for the same helpers are verified.

Neutron's extension writes, in the raw table of iptables and ip6tables (wrap: the agent's
binary name, `neutron-l3-agent`):

    :neutron-l3-agent-cth - [0:0]
    :neutron-l3-agent-cth-<first 7 characters of the helper id> - [0:0]
    -A neutron-l3-agent-PREROUTING -j neutron-l3-agent-cth
    -A neutron-l3-agent-cth -j neutron-l3-agent-cth-<id prefix>
    -A neutron-l3-agent-cth-<id prefix> -p tcp -m tcp --dport 21 -j CT --helper ftp

A helper chain is removed only when every helper of the router whose id leads to that chain
name is one cthm manages (its rule verified); the `-cth` chain and the jump to it go when no
helper chain is left. One `iptables-restore --noflush` per family, nothing when a family holds
none of these chains. The tools are the system's (`iptables-save`, as Neutron runs them).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from cthm.netfilter import NftError, NftRunner, run_in_namespace

log = logging.getLogger(__name__)

TIMEOUT = 30.0
HELPER_CHAIN_PREFIX = "cth-"
HELPER_CHAIN_ID_LENGTH = 7  # Neutron: ("cth-" + id)[:MAX_IPTABLES_CHAIN_LEN_WRAP (11)]
_CHAIN = re.compile(r":(\S+) ")
_RULE = re.compile(r"-A (\S+) (.*)")
_HELPER_CHAIN = re.compile(r"(?P<parent>.+-cth)-(?P<prefix>[0-9A-Fa-f-]{1,7})")
_JUMP = re.compile(r"(?:^|\s)-j (\S+)(?:\s|$)")


def chain_suffix(helper_id: str) -> str:
    """The part of Neutron's chain name its helper id decides."""
    return helper_id[:HELPER_CHAIN_ID_LENGTH]


@dataclass(frozen=True, slots=True)
class Removal:
    """What one family's restore removes."""

    chains: tuple[str, ...]
    text: str


def _parse(saved: str) -> tuple[set[str], list[tuple[str, str]]]:
    """The raw table's chains and rules ((chain, rule spec)) in `iptables-save` text."""
    chains: set[str] = set()
    rules: list[tuple[str, str]] = []
    in_raw = False
    for line in saved.splitlines():
        if line.startswith("*"):
            in_raw = line == "*raw"
        elif in_raw and (chain := _CHAIN.match(line)):
            chains.add(chain.group(1))
        elif in_raw and (rule := _RULE.match(line)):
            rules.append((rule.group(1), rule.group(2)))
    return chains, rules


def _helper_chains(chains: set[str]) -> dict[str, str]:
    """Neutron's helper chains -> their parent (`<wrap>-cth`, which must exist too)."""
    found = {}
    for name in chains:
        match = _HELPER_CHAIN.fullmatch(name)
        if match is not None and match.group("parent") in chains:
            found[name] = match.group("parent")
    return found


def neutron_chains(saved: str) -> set[str]:
    """Every Neutron helper chain in one family's `iptables-save -t raw` text."""
    return set(_helper_chains(_parse(saved)[0]))


def plan_removal(saved: str, managed: Iterable[str], others: Iterable[str]) -> Removal | None:
    """The restore that removes Neutron's helper chains for the helper ids `managed` from one
    family's `iptables-save -t raw` text, keeping any chain an id of `others` (the router's
    helpers cthm does not manage) also leads to; None when there is nothing to remove."""
    chains, rules = _parse(saved)
    wanted = {chain_suffix(i) for i in managed} - {chain_suffix(i) for i in others}
    all_helper_chains = _helper_chains(chains)
    gone: dict[str, str] = {}  # helper chain -> its parent (`...-cth`)
    helper_chains: dict[str, set[str]] = {}  # parent -> all its helper chains
    for name, parent in all_helper_chains.items():
        helper_chains.setdefault(parent, set()).add(name)
        if name[len(parent) + 1 :] in wanted:
            gone[name] = parent
    if not gone:
        return None
    left = {parent: names - gone.keys() for parent, names in helper_chains.items()}
    emptied = {parent for parent, names in left.items() if not names and _only_jumps(rules, parent)}
    removed = set(gone) | emptied
    deletes = [
        f"-D {chain} {spec}"
        for chain, spec in rules
        if chain not in removed and (jump := _JUMP.search(spec)) and jump.group(1) in removed
    ]
    drops = [f"{verb} {name}" for name in sorted(removed) for verb in ("-F", "-X")]
    text = "\n".join(["*raw", *deletes, *drops, "COMMIT", ""])
    return Removal(tuple(sorted(removed)), text)


def _only_jumps(rules: list[tuple[str, str]], parent: str) -> bool:
    """The `-cth` chain holds nothing but jumps to helper chains (else it is not Neutron's)."""
    prefix = parent + "-"
    for chain, spec in rules:
        if chain != parent:
            continue
        jump = _JUMP.search(spec)
        if jump is None or not jump.group(1).startswith(prefix):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Migrated:
    """What remove() did: the chains removed ("iptables: X", "ip6tables: X"), and whether any
    Neutron helper chain is left in the namespace (for helpers cthm does not manage)."""

    removed: tuple[str, ...]
    left: bool


class NeutronRules:
    """Removes Neutron's helper chains from router namespaces. nft: a runner to see cheaply
    that a namespace has no iptables-nft raw table at all (then no `iptables-save` runs)."""

    def __init__(self, nft: NftRunner | None = None) -> None:
        self._nft = nft if _system_iptables_is_nft() else None

    def remove(
        self, router_id: str, namespace: str, managed: Iterable[str], others: Iterable[str]
    ) -> Migrated:
        """Removes the chains (plan_removal) in both families. NftError when a tool fails."""
        managed, others = list(managed), list(others)
        if not managed or not self._has_raw(namespace):
            return Migrated((), left=False)
        removed: list[str] = []
        left = False
        for base in ("iptables", "ip6tables"):
            saved = self._run(namespace, f"{base}-save", ["-t", "raw"], None)
            found = neutron_chains(saved)
            plan = plan_removal(saved, managed, others)
            if plan is not None:
                self._run(namespace, f"{base}-restore", ["--noflush"], plan.text)
                removed += [f"{base}: {chain}" for chain in plan.chains]
            left = left or bool(found - set(plan.chains if plan is not None else ()))
        if removed:
            log.info(
                "router %s: migrated: removed Neutron's conntrack helper chains from %s: %s",
                router_id,
                namespace,
                ", ".join(removed),
            )
        return Migrated(tuple(removed), left=left)

    def saved(self, namespace: str) -> dict[str, str]:
        """Each family's `iptables-save -t raw` text ("iptables", "ip6tables"); empty when the
        namespace has no iptables-nft raw table at all (seen cheaply with nft). NftError (or
        NamespaceNotFound) when a tool fails; every run has a timeout."""
        if not self._has_raw(namespace):
            return {}
        return {
            base: self._run(namespace, f"{base}-save", ["-t", "raw"], None)
            for base in ("iptables", "ip6tables")
        }

    def _has_raw(self, namespace: str) -> bool:
        if self._nft is None:
            return True  # not known without iptables-save
        try:
            tables = set(self._nft.run(namespace, "list tables").splitlines())
        except (NftError, OSError, RuntimeError):
            return True
        return bool(tables & {"table ip raw", "table ip6 raw"})

    @staticmethod
    def _run(namespace: str, program: str, args: list[str], stdin: str | None) -> str:
        path = shutil.which(program)
        if path is None:
            raise FileNotFoundError(f"{program} not found on PATH")
        return run_in_namespace(
            namespace, [path, *args], program=program, stdin=stdin, timeout=TIMEOUT
        )


def _system_iptables_is_nft() -> bool:
    """Whether the system's `iptables` (the one Neutron runs) is iptables-nft: its raw table
    then shows in nftables' table list."""
    path = shutil.which("iptables")
    return path is not None and "nft" in os.path.basename(os.path.realpath(path))
