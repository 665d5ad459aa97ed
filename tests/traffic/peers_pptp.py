"""PPTP peers (RFC 2637) for the pptp helper's traffic test; run by path inside a namespace.

`pns` (the client, PPTP Network Server side that places the call) connects to tcp/1723 and
sends Start-Control-Connection-Request and Outgoing-Call-Request; `pac` (the access
concentrator, the server) answers with Start-Control-Connection-Reply and
Outgoing-Call-Reply, which carries both call ids. That reply is where the kernel's pptp helper
(nf_conntrack_pptp) creates its two GRE expectations, and nf_nat_pptp rewrites the PNS call id
when the control connection is NATed. After the test's `go` each side sends enhanced GRE
(RFC 2637 section 4.1: version 1, protocol 0x880B, key = the peer's call id) from a raw socket
and reports the GRE packets it received, so the test sees whether the call's data flow crossed
the router in each direction.

Each message goes in its own TCP segment, answered before the next is sent: the helper parses
every segment from its first byte. Events on stdout: `ready` (pac listening), `control` (call
set up; the call ids each side saw), `gre` (what arrived). Standard library only.
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import time

from peer_wire import await_go, emit, listen_tcp, recv_exact

PPTP_PORT = 1723
MAGIC_COOKIE = 0x1A2B3C4D
CONTROL_MESSAGE = 1  # PPTP Message Type: control (2 would be management)

# Control Message Types (RFC 2637 section 2)
START_CONTROL_CONNECTION_REQUEST = 1
START_CONTROL_CONNECTION_REPLY = 2
OUTGOING_CALL_REQUEST = 7
OUTGOING_CALL_REPLY = 8

PROTOCOL_VERSION = 0x0100  # 1.0
FRAMING_ASYNC_AND_SYNC = 3
BEARER_ANALOG_AND_DIGITAL = 3
RESULT_OK = 1  # SCCRP "successful channel establishment"; OCRP "connected"

IPPROTO_GRE = 47
GRE_FLAGS_KEY_SEQ_V1 = 0x3001  # K (key present) and S (sequence present) set, version 1
GRE_PROTOCOL_PPP = 0x880B
# The first PPP frame of a call: LCP Configure-Request, id 1, no options.
PPP_LCP_CONFIGURE_REQUEST = bytes.fromhex("ff03c021" + "01010004")


def control_message(message_type: int, body: bytes) -> bytes:
    """Length, PPTP message type, magic cookie, control message type, reserved0; then body."""
    header = struct.pack("!HHIHH", 12 + len(body), CONTROL_MESSAGE, MAGIC_COOKIE, message_type, 0)
    return header + body


def start_control_connection_request() -> bytes:
    """SCCRQ, 156 bytes: version, reserved1, framing and bearer capabilities, maximum
    channels, firmware revision, host name (64), vendor string (64)."""
    body = struct.pack(
        "!HHIIHH64s64s",
        PROTOCOL_VERSION,
        0,
        FRAMING_ASYNC_AND_SYNC,
        BEARER_ANALOG_AND_DIGITAL,
        0,
        1,
        b"cthm-pns",
        b"cthm traffic test",
    )
    return control_message(START_CONTROL_CONNECTION_REQUEST, body)


def start_control_connection_reply() -> bytes:
    """SCCRP, 156 bytes: version, result code, error code, then as the request."""
    body = struct.pack(
        "!HBBIIHH64s64s",
        PROTOCOL_VERSION,
        RESULT_OK,
        0,
        FRAMING_ASYNC_AND_SYNC,
        BEARER_ANALOG_AND_DIGITAL,
        1,
        1,
        b"cthm-pac",
        b"cthm traffic test",
    )
    return control_message(START_CONTROL_CONNECTION_REPLY, body)


def outgoing_call_request(call_id: int, serial: int) -> bytes:
    """OCRQ, 168 bytes: call id, call serial number, minimum and maximum bps, bearer and
    framing type, receive window, processing delay, phone number length, reserved1, phone
    number (64), subaddress (64)."""
    body = struct.pack(
        "!HHIIIIHHHH64s64s",
        call_id,
        serial,
        2400,
        10_000_000,
        BEARER_ANALOG_AND_DIGITAL,
        FRAMING_ASYNC_AND_SYNC,
        64,
        0,
        0,
        0,
        b"",
        b"",
    )
    return control_message(OUTGOING_CALL_REQUEST, body)


def outgoing_call_reply(call_id: int, peer_call_id: int) -> bytes:
    """OCRP, 32 bytes: call id, peer's call id, result code, error code, cause code, connect
    speed, receive window, processing delay, physical channel id."""
    body = struct.pack("!HHBBHIHHI", call_id, peer_call_id, RESULT_OK, 0, 0, 10_000_000, 64, 0, 0)
    return control_message(OUTGOING_CALL_REPLY, body)


def gre_packet(call_id: int, sequence: int, payload: bytes = PPP_LCP_CONFIGURE_REQUEST) -> bytes:
    """Enhanced GRE header (flags and version, protocol, payload length, call id, sequence
    number) and a PPP frame."""
    header = struct.pack(
        "!HHHHI", GRE_FLAGS_KEY_SEQ_V1, GRE_PROTOCOL_PPP, len(payload), call_id, sequence
    )
    return header + payload


def read_control_message(conn: socket.socket) -> tuple[int, bytes]:
    """One control message: (control message type, body); checks the header's constants."""
    length = struct.unpack("!H", recv_exact(conn, 2))[0]
    rest = recv_exact(conn, length - 2)
    kind, cookie, message_type = struct.unpack("!HIH", rest[:8])
    if kind != CONTROL_MESSAGE or cookie != MAGIC_COOKIE:
        raise ValueError(f"not a PPTP control message: {rest[:10].hex()}")
    return message_type, rest[10:]


def _expect(conn: socket.socket, message_type: int) -> bytes:
    got, body = read_control_message(conn)
    if got != message_type:
        raise ValueError(f"expected control message {message_type}, got {got}")
    return body


def _gre_exchange(peer: str, send_key: int, own_key: int, window: float) -> list[dict[str, object]]:
    """Sends GRE (key `send_key`) to `peer` every 50 ms and collects GRE arriving with key
    `own_key`, for `window` seconds or until 1 s after the first arrival (the peer keeps
    sending that long after its own first arrival: on a loaded machine it may start
    listening late; 0.3 s lost a call's packets once in CI)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
    received: list[dict[str, object]] = []
    start = time.monotonic()
    first: float | None = None
    sequence = 0
    next_send = start
    with raw:
        while True:
            now = time.monotonic()
            if now - start > window or (first is not None and now - first > 1.0):
                return received
            if now >= next_send:
                raw.sendto(gre_packet(send_key, sequence), (peer, 0))
                sequence += 1
                next_send = now + 0.05
            ready, _, _ = select.select([raw], [], [], max(0.0, next_send - time.monotonic()))
            if not ready:
                continue
            packet, (source, _) = raw.recvfrom(65535)
            gre = packet[(packet[0] & 0x0F) * 4 :]  # past the IPv4 header
            flags, protocol, _length, key = struct.unpack("!HHHH", gre[:8])
            if flags & 0x7 != 1 or protocol != GRE_PROTOCOL_PPP or key != own_key:
                continue
            received.append({"source": source, "key": key, "payload": gre[12:].hex()})
            if first is None:
                first = time.monotonic()


def run_pac(listen: str, call_id: int, timeout: float, window: float) -> None:
    server = listen_tcp(listen, PPTP_PORT)
    server.settimeout(timeout)
    emit("ready")
    conn, (peer, _) = server.accept()
    with server, conn:
        conn.settimeout(timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _expect(conn, START_CONTROL_CONNECTION_REQUEST)
        conn.sendall(start_control_connection_reply())
        body = _expect(conn, OUTGOING_CALL_REQUEST)
        peer_call_id = struct.unpack("!H", body[:2])[0]
        conn.sendall(outgoing_call_reply(call_id, peer_call_id))
        emit("control", peer=peer, call_id=call_id, peer_call_id=peer_call_id)
        await_go(timeout)
        emit("gre", received=_gre_exchange(peer, peer_call_id, call_id, window))


def run_pns(server: str, call_id: int, timeout: float, window: float) -> None:
    with socket.create_connection((server, PPTP_PORT), timeout=timeout) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(start_control_connection_request())
        body = _expect(conn, START_CONTROL_CONNECTION_REPLY)
        if body[2] != RESULT_OK:
            raise ValueError(f"start control connection refused: result {body[2]}")
        conn.sendall(outgoing_call_request(call_id, serial=1))
        body = _expect(conn, OUTGOING_CALL_REPLY)
        pac_call_id, peer_call_id, result = struct.unpack("!HHB", body[:5])
        emit("control", call_id=call_id, pac_call_id=pac_call_id, peer_call_id=peer_call_id)
        if result != RESULT_OK:
            raise ValueError(f"outgoing call refused: result {result}")
        await_go(timeout)
        emit("gre", received=_gre_exchange(server, pac_call_id, call_id, window))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("pac", "pns"))
    parser.add_argument("address", help="pac: address to listen on; pns: the pac's address")
    parser.add_argument("--call-id", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=2.5, help="GRE phase bound, seconds")
    args = parser.parse_args()
    run = run_pac if args.role == "pac" else run_pns
    run(args.address, args.call_id, args.timeout, args.window)


if __name__ == "__main__":
    main()
