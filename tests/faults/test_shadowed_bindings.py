"""A Neutron-style `-j CT --helper irc` rule in the router's raw PREROUTING gets a binding's
connections before cthm's rule does: the agent finds it at its periodic resync (0.5 s here),
the binding stays ACTIVE with a status_reason naming the rule, and kernel_state lists it under
`shadowed`; once the rule is deleted, the next resync clears both. On the nftables backend and
on the iptables backend of each installed flavour (the foreign rule written with that flavour,
first in PREROUTING, so it runs before cthm's jump)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from cthm.testing import NamespaceFactory, run_in_namespace
from support.faults import Api, ServerFactory, wait_until

pytestmark = pytest.mark.kernel

RESYNC = ("--resync-interval", "0.5")
MATCH = ["-p", "tcp", "--dport", "6667", "-j", "CT", "--helper", "irc"]
# As iptables-save prints it back (the form the agent names).
RULE = "-A PREROUTING -p tcp -m tcp --dport 6667 -j CT --helper irc"
REASON = f"shadowed by rule `{RULE}` in raw PREROUTING: connections get helper irc, not ftp"
SETUPS = {
    "nftables": ("iptables-nft", ("--backend", "nftables")),
    "iptables-nft": ("iptables-nft", ("--backend", "iptables", "--iptables-flavour", "nft")),
    "iptables-legacy": (
        "iptables-legacy",
        ("--backend", "iptables", "--iptables-flavour", "legacy"),
    ),
}


def kernel_state(api: Api, router_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v2.0/routers/{router_id}/kernel_state")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["kernel_state"]
    return body


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_shadowing_rule_is_reported_at_resync_and_cleared_when_it_goes(
    setup: str, make_server: ServerFactory, netns: NamespaceFactory
) -> None:
    tool, args = SETUPS[setup]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    server = make_server(*RESYNC, *args)
    namespace = netns.create("shd")
    with Api(server) as api:
        router_id = api.create_router(namespace, "shadow")
        created = api.create_binding(router_id, "tcp", 6667, "ftp")
        assert created.status_code == 201, created.text
        binding_id = created.json()["conntrack_helper"]["id"]

        def applied() -> bool:
            (row,) = api.bindings(router_id)
            return row["status"] == "ACTIVE" and kernel_state(api, router_id)["in_sync"] is True

        # (Either backend: the agent's read-back, not an nftables table, says it is applied.)
        assert wait_until(applied, 10.0), (kernel_state(api, router_id), server.logs())
        (binding,) = api.bindings(router_id)
        assert binding["status_reason"] == ""
        assert kernel_state(api, router_id)["shadowed"] == []

        # Neutron's leftover, added behind cthm's back: only a resync can notice it.
        run_in_namespace(namespace, [tool, "-t", "raw", "-I", "PREROUTING", *MATCH])

        def reason() -> str:
            (row,) = api.bindings(router_id)
            assert row["status"] == "ACTIVE", row  # cthm's own rule is still in place
            text: str = row["status_reason"]
            return text

        assert wait_until(lambda: reason() == REASON, 10.0), (reason(), server.logs())
        state = kernel_state(api, router_id)
        assert state["in_sync"] is True, state  # cthm's table is as desired
        assert state["shadow_checked_at"] is not None
        (shadow,) = state["shadowed"]
        assert shadow == {
            "binding_id": binding_id,
            "protocol": "tcp",
            "port": 6667,
            "direction": "ingress",
            "helper": "ftp",
            "kernel_helper": "ftp",
            "rule": RULE,
            "where": "raw PREROUTING",
            "families": ["IPv4"],
            "foreign_helper": "irc",
            "conditions": [],
            "effect": "helper irc wins",
        }
        router = api.router(router_id)
        assert (router["status"], router["status_reason"]) == ("ACTIVE", "")

        # Found again on every resync, written once: the binding's row does not change.
        revision = api.bindings(router_id)[0]["revision_number"]
        checked = state["shadow_checked_at"]
        assert wait_until(lambda: kernel_state(api, router_id)["shadow_checked_at"] != checked, 5.0)
        (again,) = api.bindings(router_id)
        assert (again["revision_number"], again["status_reason"]) == (revision, REASON)

        run_in_namespace(namespace, [tool, "-t", "raw", "-D", "PREROUTING", *MATCH])
        assert wait_until(lambda: reason() == "", 10.0), (reason(), server.logs())
        assert kernel_state(api, router_id)["shadowed"] == []
