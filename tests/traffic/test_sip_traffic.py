"""The sip helper proven with a real SIP call (sipp) through the strict IPv4 NAT router.

Without a binding the call's signalling crosses the router (udp or tcp/5060 is open), but the
far end is told the client's private address and the media never arrives. After a sip binding
is POSTed to a real `cthm serve` (either backend), the router's NAT helper rewrites the SDP to
its public address, `conntrack -L expect` shows the sip helper's media expectation while the
call is up, and the media from the server reaches the client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bindings_api import ApiRouter, bind_through_api
from catalog_binding import require_kernel_modules
from peers_sip import SIP_PORT, Transport, require_sipp
from sip_media import call_with_media
from topology6 import allow_new, ipv4_plane

from cthm.testing import Topology, conntrack_flush, install_router_input_firewall
from cthm.testing.service import ServerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.traffic, pytest.mark.catalog]


@pytest.fixture
def sip_topology(topology: Topology) -> Topology:
    require_sipp()
    require_kernel_modules("nf_conntrack_sip", "nf_nat_sip")
    for protocol in ("udp", "tcp"):
        allow_new(topology, ipv4_plane(topology), protocol, SIP_PORT)
    return topology


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sip_binding_rewrites_the_sdp_and_lets_the_media_through(
    sip_topology: Topology,
    service: ServerProcess,
    tmp_path: Path,
    transport: Transport,
) -> None:
    t, plane = sip_topology, ipv4_plane(sip_topology)

    call, media = call_with_media(t, plane, tmp_path / "without", transport)
    assert call.completed, call.logs  # the signalling works without the helper
    assert call.offer.address == plane.client_addr, call.offer.invite  # not rewritten
    assert media.received is None, (media, call.logs)
    assert "timeout" in (media.failure or ""), media
    assert "helper=sip" not in media.expectations, media.expectations

    bind_through_api(service, t, [(transport, SIP_PORT, "sip")])
    conntrack_flush(t.router_ns)  # the call's port pair was tracked without a helper

    call, media = call_with_media(t, plane, tmp_path / "with", transport)
    assert call.completed, call.logs
    # The NAT helper told the far end the router's public address.
    assert call.offer.address == plane.router_server_addr, call.offer.invite
    assert f"o=cthm 1 1 IN IP4 {plane.router_server_addr}" in call.offer.invite
    assert "helper=sip" in media.expectations, media.expectations
    assert f"dport={call.offer.port}" in media.expectations, media.expectations
    assert media.received == b"rtp-with", media
    assert media.sender == plane.server_addr, media


def test_sip_output_binding_lets_the_routers_own_call_get_its_media(
    sip_topology: Topology, service: ServerProcess, tmp_path: Path
) -> None:
    # The router namespace itself calls, behind its strict INPUT firewall: only a sip helper
    # on its own (OUTPUT) connection makes the media coming back to it related.
    t, plane = sip_topology, ipv4_plane(sip_topology)
    install_router_input_firewall(t)

    call, media = call_with_media(t, plane, tmp_path / "without", from_router=True)
    assert call.completed, call.logs
    assert media.received is None, media
    assert "timeout" in (media.failure or ""), media

    # An ingress binding does nothing for the router's own call ...
    router = ApiRouter(service, t)
    router.bind([("udp", SIP_PORT, "sip")])
    conntrack_flush(t.router_ns)
    call, media = call_with_media(t, plane, tmp_path / "ingress", from_router=True)
    assert call.completed, call.logs
    assert media.received is None, media
    assert "helper=sip" not in media.expectations, media.expectations

    # ... an output one does.
    router.bind([("udp", SIP_PORT, "sip")], direction="output")
    conntrack_flush(t.router_ns)
    call, media = call_with_media(t, plane, tmp_path / "with", from_router=True)
    assert call.completed, call.logs
    assert "helper=sip" in media.expectations, media.expectations
    assert media.received == b"rtp-with", media
    assert media.sender == plane.server_addr, media
