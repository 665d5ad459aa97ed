"""Migrating a router from Neutron's conntrack-helper extension to cthm's (issue 15): the router
is first run by Neutron's own extension (its `neutron-l3-agent-cth*` chains in the raw tables),
then the node's L3 agent restarts with cthm's. Once cthm's rules are verified, Neutron's chains
for the helpers cthm manages are gone, in both families; with `remove_neutron_rules = false`
they stay; a helper cthm refuses keeps Neutron's chain.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cthm.testing import NamespaceFactory, run_in_namespace

pytest.importorskip("neutron")

pytestmark = pytest.mark.kernel

CTH = "neutron-l3-agent-cth"
Harness = Callable[..., Any]


class _Router(NamespaceFactory):
    """The router's namespace, named as Neutron names it (`qrouter-<id>`), made by the test so
    that it outlives the first agent; deleted by exactly that name at the end."""

    def __init__(self, router_id: str) -> None:
        super().__init__()
        self.router_id = router_id

    def name(self, label: str) -> str:
        return f"qrouter-{self.router_id}"


@pytest.fixture
def router() -> Iterator[tuple[str, str]]:
    """(router id, its namespace)."""
    router_id = str(uuid.uuid4())
    factory = _Router(router_id)
    try:
        yield router_id, factory.create("router")
    finally:
        assert factory.cleanup() == []


def neutron_chains(namespace: str) -> dict[str, set[str]]:
    """Neutron's conntrack helper chains per family ("iptables", "ip6tables")."""
    found = {}
    for tool in ("iptables", "ip6tables"):
        text = run_in_namespace(namespace, [f"{tool}-save", "-t", "raw"]).stdout
        found[tool] = {
            line.split()[0][1:] for line in text.splitlines() if line.startswith(f":{CTH}")
        }
    return found


def run_by_neutron(
    make: Harness, extension_class: type, router_id: str, helpers: list[tuple[str, int, str]]
) -> list[Any]:
    """The router on an L3 agent with Neutron's own extension; its chains checked written.
    Returns the helper objects (the server's database)."""
    agent = make(extension_class)
    objects = [agent.helper(router_id, *h) for h in helpers]
    agent.server.helpers[router_id] = list(objects)
    agent.add_router(router_id, create_namespace=False)
    namespace = f"qrouter-{router_id}"
    chains = {f"{CTH}-{h.id[:7]}" for h in objects} | {CTH}
    assert neutron_chains(namespace) == {"iptables": chains, "ip6tables": chains}
    agent.close()  # the L3 agent stops; the namespace and Neutron's chains stay
    return objects


def run_by_cthm(
    make: Harness, extension_class: type, router_id: str, helpers: list[Any], **kw: Any
) -> dict[str, Any]:
    """The L3 agent again, now with cthm's extension; returns the router's state file."""
    agent = make(extension_class, **kw)
    agent.server.helpers[router_id] = list(helpers)
    agent.add_router(router_id, create_namespace=False)
    path = Path(agent.conf.cthm.state_path) / f"{router_id}.json"
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def cthm_rules(namespace: str) -> str:
    return run_in_namespace(namespace, ["nft", "list", "table", "inet", "cthm"]).stdout


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_neutrons_chains_go_once_cthms_rules_are_verified(
    neutron_harness: Harness,
    neutron_extension_class: type,
    cthm_extension_class: type,
    router: tuple[str, str],
    backend: str,
) -> None:
    router_id, namespace = router
    helpers = run_by_neutron(
        neutron_harness,
        neutron_extension_class,
        router_id,
        [("tcp", 21, "ftp"), ("udp", 69, "tftp")],
    )

    state = run_by_cthm(neutron_harness, cthm_extension_class, router_id, helpers, backend=backend)

    assert state["status"] == "ACTIVE"
    assert state["in_sync"] is True
    assert {(h["helper"], h["status"]) for h in state["helpers"]} == {
        ("ftp", "ACTIVE"),
        ("tftp", "ACTIVE"),
    }
    # Every Neutron chain gone, the jump to them too; cthm's rules in place.
    assert neutron_chains(namespace) == {"iptables": set(), "ip6tables": set()}
    for tool in ("iptables", "ip6tables"):
        saved = run_in_namespace(namespace, [f"{tool}-save", "-t", "raw"]).stdout
        assert CTH not in saved
        if backend == "iptables":
            assert "--dport 21 -j CT --helper ftp" in saved
            assert "--dport 69 -j CT --helper tftp" in saved
    if backend == "nftables":
        rules = cthm_rules(namespace)
        assert 'ct helper set "ftp-tcp"' in rules
        assert 'ct helper set "tftp-udp"' in rules


def test_neutrons_chains_stay_when_not_asked_to_remove_them(
    neutron_harness: Harness,
    neutron_extension_class: type,
    cthm_extension_class: type,
    router: tuple[str, str],
) -> None:
    from oslo_config import cfg

    router_id, namespace = router
    helpers = run_by_neutron(
        neutron_harness, neutron_extension_class, router_id, [("tcp", 21, "ftp")]
    )
    cfg.CONF.set_override("remove_neutron_rules", False, "cthm")
    try:
        state = run_by_cthm(neutron_harness, cthm_extension_class, router_id, helpers)
    finally:
        cfg.CONF.clear_override("remove_neutron_rules", "cthm")

    assert state["status"] == "ACTIVE"
    assert state["in_sync"] is True
    chains = {CTH, f"{CTH}-{helpers[0].id[:7]}"}
    assert neutron_chains(namespace) == {"iptables": chains, "ip6tables": chains}
    assert 'ct helper set "ftp-tcp"' in cthm_rules(namespace)


def test_a_helper_cthm_refuses_keeps_neutrons_chain(
    neutron_harness: Harness,
    neutron_extension_class: type,
    cthm_extension_class: type,
    router: tuple[str, str],
) -> None:
    router_id, namespace = router
    ftp, tftp = run_by_neutron(
        neutron_harness,
        neutron_extension_class,
        router_id,
        [("tcp", 21, "ftp"), ("udp", 69, "tftp")],
    )
    # Meanwhile Neutron's API took a change of the second helper that the kernel cannot do
    # (irc handles only tcp): cthm refuses it, so it manages no rule for that helper id.
    refused = type(tftp)(id=tftp.id, router_id=router_id, protocol="udp", port=6667, helper="irc")

    state = run_by_cthm(neutron_harness, cthm_extension_class, router_id, [ftp, refused])

    statuses = {h["id"]: (h["status"], h["reason"]) for h in state["helpers"]}
    assert statuses[ftp.id] == ("ACTIVE", "")
    assert statuses[tftp.id][0] == "ERROR"
    assert "irc" in statuses[tftp.id][1]
    kept = {CTH, f"{CTH}-{tftp.id[:7]}"}  # the refused helper's chain, and the jump to it
    assert neutron_chains(namespace) == {"iptables": kept, "ip6tables": kept}
    assert 'ct helper set "ftp-tcp"' in cthm_rules(namespace)
