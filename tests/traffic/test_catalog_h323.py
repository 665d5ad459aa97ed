"""The H.323 pair (Q.931 and RAS, bound with Neutron's `h323` alias) proven with H.225.0
messages through the strict NAT router, via cthm's API.

Q.931: a caller in the client namespace sends SETUP to tcp/1720; the callee answers CONNECT
whose Connect-UUIE carries its h245Address. Without a binding the call signalling works but
the caller's H.245 connection to that address is dropped (a new flow the firewall does not
allow). With the binding the router holds the Q.931 helper's expectation for it (captured
before the connection is made), the connection passes and carries the H.245 helper.

RAS: an endpoint in the client namespace registers with a gatekeeper (RRQ on udp/1719, naming
its call signalling address; the gatekeeper answers RCF). Without a binding the gatekeeper
sees the endpoint's private address, which it cannot reach, and the router's address on that
port is refused. With the binding nf_nat_h323 rewrites the RRQ's callSignalAddress to the
router's address, the RAS helper expects the gatekeeper's Q.931 connection there, and it
reaches the endpoint (DNAT) carrying the Q.931 helper.

The messages are built in peers_h323.py from the kernel decoder's view of H.225.0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bindings_api import bind_through_api
from catalog_binding import allow_new_from_client, require_kernel_modules, router_conntrack
from peer_process import control_then_go
from peers_h323 import Q931_PORT, RAS_PORT

from cthm.testing import ServerProcess, Topology, conntrack_flush

pytestmark = [pytest.mark.kernel, pytest.mark.traffic, pytest.mark.catalog]

PEERS = Path(__file__).with_name("peers_h323.py")
H245_PORT = 4999
EVENT_TIMEOUT = 8.0


@pytest.fixture
def h323_topology(topology: Topology) -> Topology:
    require_kernel_modules("nf_conntrack_h323", "nf_nat_h323")
    return topology


def q931_call(t: Topology) -> tuple[dict[str, object], list[str], str, dict[str, object]]:
    """SETUP/CONNECT, then the caller's H.245 connection: (caller's control event, router
    expectations before H.245, the caller's outcome, the callee's H.245 event)."""
    callee = ["q931-callee", t.server_addr, "--port", str(H245_PORT)]
    call = control_then_go(t, PEERS, callee, ["q931-caller", t.server_addr], "h245", EVENT_TIMEOUT)
    outcome = str(call.client_result["outcome"])
    return call.client_control, call.expectations, outcome, call.server_result


def test_q931_connect_h245_address_opens_h245_only_with_the_binding(
    h323_topology: Topology, service: ServerProcess
) -> None:
    t = h323_topology
    allow_new_from_client(t, "tcp", Q931_PORT)
    control, expectations, outcome, served = q931_call(t)
    assert control["h245_address"] == [t.server_addr, H245_PORT], control  # signalling worked
    signalling = router_conntrack(t, "-L", "-p", "tcp", "--orig-port-dst", str(Q931_PORT))
    assert signalling, "the Q.931 connection never went through the router"
    assert not [line for line in signalling if "helper=" in line], signalling
    assert not [line for line in expectations if "proto=6" in line], expectations
    assert outcome == "timeout", outcome  # the firewall dropped the H.245 connection
    assert served == {"event": "h245", "accepted": False}, served

    bind_through_api(service, t, [("tcp", Q931_PORT, "h323")])
    conntrack_flush(t.router_ns)
    control, expectations, outcome, served = q931_call(t)

    assert control["h245_address"] == [t.server_addr, H245_PORT], control
    assert any(
        f"proto=6 src={t.client_addr} dst={t.server_addr} sport=0 dport={H245_PORT}" in line
        and "helper=Q.931" in line
        for line in expectations
    ), expectations
    assert outcome == "connected", outcome
    assert served == {"event": "h245", "accepted": True, "peer": t.router_server_addr}, served
    h245 = router_conntrack(t, "-L", "-p", "tcp", "--orig-port-dst", str(H245_PORT))
    assert any("helper=H.245" in line for line in h245), h245


def registration(
    t: Topology,
) -> tuple[dict[str, object], dict[str, object], list[str], dict[str, object], dict[str, object]]:
    """RRQ/RCF, then the gatekeeper's Q.931 connection to the registered address:
    (endpoint's control event, gatekeeper's, router expectations before the connection,
    the gatekeeper's outcome, the endpoint's)."""
    endpoint = ["endpoint", t.server_addr, "--own", t.client_addr, "--port", str(Q931_PORT)]
    call = control_then_go(t, PEERS, ["gatekeeper", t.server_addr], endpoint, "q931", EVENT_TIMEOUT)
    return (
        call.client_control,
        call.server_control,
        call.expectations,
        call.server_result,
        call.client_result,
    )


RCF_FIRST_OCTET = "10"  # RasMessage root alternative 4 (registrationConfirm), no extensions


def test_ras_registration_lets_the_gatekeeper_call_only_with_the_binding(
    h323_topology: Topology, service: ServerProcess
) -> None:
    t = h323_topology
    allow_new_from_client(t, "udp", RAS_PORT)
    endpoint, gatekeeper, expectations, called, answered = registration(t)
    assert endpoint["answer"] == RCF_FIRST_OCTET, endpoint  # RRQ and RCF crossed the router
    assert gatekeeper["peer"] == t.router_server_addr, gatekeeper
    # Unchanged: the endpoint's private address, which the gatekeeper cannot route to.
    assert gatekeeper["call_signal_address"] == [t.client_addr, Q931_PORT], gatekeeper
    ras = router_conntrack(t, "-L", "-p", "udp", "--orig-port-dst", str(RAS_PORT))
    assert ras, "the RAS request never went through the router"
    assert not [line for line in ras if "helper=" in line], ras
    assert not [line for line in expectations if "proto=6" in line], expectations
    assert called["outcome"] == "ENETUNREACH", called
    assert called["via_router"] == "ECONNREFUSED", called
    assert answered == {"event": "q931", "accepted": False}, answered

    bind_through_api(service, t, [("udp", RAS_PORT, "h323")])
    conntrack_flush(t.router_ns)
    endpoint, gatekeeper, expectations, called, answered = registration(t)

    assert endpoint["answer"] == RCF_FIRST_OCTET, endpoint
    # nf_nat_h323 rewrote the registered address to the router's, port kept while free.
    assert gatekeeper["call_signal_address"] == [t.router_server_addr, Q931_PORT], gatekeeper
    assert any(
        f"proto=6 src={t.server_addr} dst={t.router_server_addr} sport=0 dport={Q931_PORT}" in line
        and "helper=RAS" in line
        for line in expectations
    ), expectations
    assert called == {"event": "q931", "outcome": "connected", "via_router": None}, called
    assert answered == {"event": "q931", "accepted": True, "peer": t.server_addr}, answered
    # The gatekeeper's call reached the endpoint by DNAT and carries the Q.931 helper.
    calls = router_conntrack(t, "-L", "-p", "tcp", "--orig-src", t.server_addr)
    assert any(
        f"src={t.client_addr} dst={t.server_addr} sport={Q931_PORT}" in line
        and "helper=Q.931" in line
        for line in calls
    ), calls
