"""The pptp helper proven with a PPTP call through the strict NAT router, via cthm's API.

A scripted PNS in the client namespace sets up a call with a PAC in the server namespace over
tcp/1723 (the only new flow the router's firewall lets through), then both send the call's
enhanced GRE. Without a binding the control connection works but GRE crosses the router in
neither direction (not related to anything; the PAC's GRE to the masquerading address has no
NAT mapping). With the binding POSTed to a real `cthm serve`, the router holds the helper's two
GRE expectations (keyed by the call ids, captured before any GRE flows) and GRE passes both
ways, the PNS call id translated by nf_nat_pptp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bindings_api import bind_through_api
from catalog_binding import allow_new_from_client, require_kernel_modules, router_conntrack
from peer_process import control_then_go
from peers_pptp import PPP_LCP_CONFIGURE_REQUEST, PPTP_PORT

from cthm.testing import ServerProcess, Topology, conntrack_flush

pytestmark = [pytest.mark.kernel, pytest.mark.traffic, pytest.mark.catalog]

PEERS = Path(__file__).with_name("peers_pptp.py")
PNS_CALL_ID = 0x1234
PAC_CALL_ID = 0x4321
EVENT_TIMEOUT = 8.0


@dataclass(frozen=True)
class PptpCall:
    pns_control: dict[str, Any]
    pac_control: dict[str, Any]
    expectations: list[str]  # `conntrack -L expect` in the router before any GRE
    pns_received: list[dict[str, Any]]
    pac_received: list[dict[str, Any]]


def pptp_call(topology: Topology) -> PptpCall:
    """One PPTP control session and call, then GRE both ways; every peer stopped by pid."""
    t = topology
    pac = ["pac", t.server_addr, "--call-id", str(PAC_CALL_ID)]
    pns = ["pns", t.server_addr, "--call-id", str(PNS_CALL_ID)]
    # The expectations are read once the Outgoing-Call-Reply has crossed the router.
    call = control_then_go(t, PEERS, pac, pns, "gre", EVENT_TIMEOUT)
    return PptpCall(
        call.client_control,
        call.server_control,
        call.expectations,
        call.client_result["received"],
        call.server_result["received"],
    )


@pytest.fixture
def pptp_topology(topology: Topology) -> Topology:
    require_kernel_modules("nf_conntrack_pptp", "nf_nat_pptp")
    allow_new_from_client(topology, "tcp", PPTP_PORT)
    return topology


def test_pptp_gre_call_passes_the_router_only_with_the_binding(
    pptp_topology: Topology, service: ServerProcess
) -> None:
    t = pptp_topology
    without = pptp_call(t)
    # The control session and call set-up crossed the router, unchanged.
    assert without.pns_control["pac_call_id"] == PAC_CALL_ID, without
    assert without.pns_control["peer_call_id"] == PNS_CALL_ID, without
    assert without.pac_control["peer_call_id"] == PNS_CALL_ID, without
    assert without.pac_control["peer"] == t.router_server_addr, without  # masqueraded
    control = router_conntrack(t, "-L", "-p", "tcp", "--orig-port-dst", str(PPTP_PORT))
    assert control, "the control connection never went through the router"
    assert not [line for line in control if "helper=" in line], control
    assert not [line for line in without.expectations if "proto=47" in line], without
    # The call's data flow is lost both ways.
    assert without.pns_received == [], without
    assert without.pac_received == [], without

    bind_through_api(service, t, [("tcp", PPTP_PORT, "pptp")])
    conntrack_flush(t.router_ns)  # the next control connection gets the helper from the start
    call = pptp_call(t)

    assert call.pns_control["pac_call_id"] == PAC_CALL_ID, call
    assert call.pns_control["peer_call_id"] == PNS_CALL_ID, call  # translated back by NAT
    nat_call_id = call.pac_control["peer_call_id"]  # the PNS call id as the PAC sees it
    gre = [line for line in call.expectations if "proto=47" in line and "helper=pptp" in line]
    # PNS -> PAC: the client's own call id; PAC -> PNS: towards the NATed call id.
    assert any(
        f"src={t.client_addr} dst={t.server_addr} srckey={PNS_CALL_ID:#x}"
        f" dstkey={PAC_CALL_ID:#x}" in line
        for line in gre
    ), call.expectations
    assert any(
        f"src={t.server_addr} dst={t.router_server_addr} srckey={PAC_CALL_ID:#x}"
        f" dstkey={nat_call_id:#x}" in line
        for line in gre
    ), call.expectations
    want = PPP_LCP_CONFIGURE_REQUEST.hex()
    assert call.pns_received, call
    assert all(
        p == {"source": t.server_addr, "key": PNS_CALL_ID, "payload": want}
        for p in call.pns_received
    ), call
    assert call.pac_received, call
    assert all(
        p == {"source": t.router_server_addr, "key": PAC_CALL_ID, "payload": want}
        for p in call.pac_received
    ), call
    tracked = router_conntrack(t, "-L", "-p", "gre")
    assert any(f"srckey={PNS_CALL_ID:#x} dstkey={PAC_CALL_ID:#x}" in line for line in tracked), (
        tracked
    )
