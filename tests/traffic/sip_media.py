"""One SIP call with its media check, on either address family of the traffic topology.

`call_with_media` places a sipp call from the client to the server namespace and, while the
call is up, sends an RTP-like UDP flow from the server to where the INVITE's SDP (as the UAS
received it) says the media goes; the client listens on the port it offered. Without the sip
helper that flow is a new connection the router's strict firewall drops (IPv6, routed), or
goes to the client's private address the server cannot reach (IPv4 behind NAT; it is also sent
to the router's public address at the offered port, where a NAT-unaware peer would send it, and
is lost there too). With the helper the router expects it, so it is related and passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bindings_api import poll_expectations
from peers import start_udp_receiver, udp_send
from peers_sip import MEDIA_PORT, CallOutcome, Offer, Transport, sip_call
from topology6 import Plane

from cthm.testing import Topology, TransferFailed

MEDIA_WAIT = 2.0  # s a lost media flow costs; the call is held longer (peers_sip.HOLD_MS)


@dataclass(frozen=True)
class MediaOutcome:
    received: bytes | None
    sender: str | None
    failure: str | None
    expectations: str
    send_errors: str


def call_with_media(
    topology: Topology,
    plane: Plane,
    workdir: Path,
    transport: Transport = "udp",
    *,
    from_router: bool = False,
) -> tuple[CallOutcome, MediaOutcome]:
    """The call and its media; `from_router`: the router namespace itself is the caller (the
    case for output bindings, behind the router's INPUT firewall)."""
    token = f"rtp-{workdir.name}"
    family = plane.family
    caller = (
        (topology.router_ns, plane.router_server_addr)
        if from_router
        else (topology.client_ns, plane.client_addr)
    )

    def media(offer: Offer) -> MediaOutcome:
        wildcard = "::" if family == "ipv6" else "0.0.0.0"
        receiver = start_udp_receiver(
            caller[0], wildcard, MEDIA_PORT, workdir / "media", timeout=MEDIA_WAIT
        )
        try:
            # Captured while the expectation lives: the call is up, no media has flowed yet.
            listing = poll_expectations(topology.router_ns, "sip", family, timeout=0.5)
            errors = [udp_send(topology.server_ns, offer.address, offer.port, token)]
            if offer.address != plane.router_server_addr and family == "ipv4":
                errors.append(
                    udp_send(topology.server_ns, plane.router_server_addr, offer.port, token)
                )
            try:
                data, sender = receiver.result()
            except TransferFailed as exc:
                return MediaOutcome(None, None, str(exc), listing, "; ".join(filter(None, errors)))
            return MediaOutcome(data, sender, None, listing, "; ".join(filter(None, errors)))
        finally:
            receiver.stop()

    return sip_call(
        caller,
        (topology.server_ns, plane.server_addr),
        workdir,
        media,
        transport=transport,
    )
