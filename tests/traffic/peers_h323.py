"""H.323 peers for the RAS and Q.931 helpers' traffic tests; run by path inside a namespace.

The messages are H.225.0 (ITU-T, ASN.1 in the aligned variant of PER) built bit by bit below,
each field as the kernel's decoder reads it (net/netfilter/nf_conntrack_h323_types.c names, per
SEQUENCE, the root components, how many of them are OPTIONAL and whether it is extensible;
nf_conntrack_h323_asn1.c reads them). They are version 1 messages (protocol identifier
{itu-t recommendation h 2250 version 1}): only root components, so no extension additions are
owed. Addresses are TransportAddress ipAddress: 4 octets and a port, octet-aligned.

Roles (events on stdout, one JSON object a line; standard library only):
- `q931-callee` (server): accepts tcp/1720, reads a SETUP, answers CONNECT whose H.225
  Connect-UUIE carries `h245Address` = its own address and an H.245 port, on which it listens.
  The kernel's Q.931 helper expects the caller's H.245 connection to that address from that.
- `q931-caller` (client): sends SETUP, reads CONNECT, takes the h245Address in it and opens
  the H.245 connection there after the test's `go`.
- `gatekeeper` (server): reads a RAS RegistrationRequest on udp/1719, answers it (the
  control flow), and after `go` opens the Q.931 connection to the callSignalAddress the RRQ
  carried as it arrived (nf_nat_h323 rewrites it to the router's address behind NAT).
- `endpoint` (client): listens for Q.931 on its callSignalAddress and registers with an RRQ.

The second flows (H.245, the gatekeeper's Q.931) only connect and exchange one byte: what is
tested is whether the router lets them through, not what they carry.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import struct

from peer_wire import await_go, emit, listen_tcp, recv_exact

Q931_PORT = 1720
RAS_PORT = 1719

# {itu-t(0) recommendation(0) h(8) 2250 version(0) 1}, BER contents octets of the OID.
H225_V1_OID = bytes.fromhex("0008914a0001")

Q931_PROTOCOL_DISCRIMINATOR = 0x08
Q931_SETUP = 0x05
Q931_CONNECT = 0x07
IE_BEARER_CAPABILITY = 0x04
IE_USER_USER = 0x7E
USER_USER_X208 = 0x05  # user-user protocol discriminator: X.208/X.209 coded (ASN.1)
# Bearer capability for speech: coding ITU-T/speech, circuit mode 64 kbit/s, layer 1 G.711 A-law.
BEARER_SPEECH = bytes.fromhex("8090a3")

CONFERENCE_ID = bytes.fromhex("c7a1e0d25b3a4f0e9d8c7b6a59483726")


class PerWriter:
    """Aligned PER, most significant bit first: the few constructs H.225.0 needs here."""

    def __init__(self) -> None:
        self._bits: list[int] = []

    def bits(self, value: int, width: int) -> None:
        self._bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))

    def align(self) -> None:
        while len(self._bits) % 8:
            self._bits.append(0)

    def octets(self, data: bytes) -> None:
        self.align()
        for byte in data:
            self.bits(byte, 8)

    @property
    def bit_length(self) -> int:
        return len(self._bits)

    def to_bytes(self) -> bytes:
        self.align()
        return bytes(
            int("".join(map(str, self._bits[i : i + 8])), 2) for i in range(0, len(self._bits), 8)
        )


def _object_identifier(w: PerWriter, contents: bytes) -> None:
    # OBJECT IDENTIFIER: an octet-aligned length determinant, then the BER contents.
    w.octets(bytes([len(contents)]) + contents)


def _transport_address(w: PerWriter, ip: str, port: int) -> int:
    """TransportAddress (CHOICE, extensible, 7 root alternatives: 3 bits) ipAddress (0):
    SEQUENCE {ip OCTET STRING (SIZE(4)), port INTEGER (0..65535)}, both octet-aligned.
    Returns the bit offset of the ip octets."""
    w.bits(0, 1)  # not an extension alternative
    w.bits(0, 3)  # ipAddress
    w.align()
    at = w.bit_length
    w.octets(ipaddress.IPv4Address(ip).packed + struct.pack("!H", port))
    return at


def _endpoint_type_terminal(w: PerWriter) -> None:
    """EndpointType (SEQUENCE, extensible; 8 root components, 6 OPTIONAL) for a terminal."""
    w.bits(0, 1)  # no extension additions
    # OPTIONAL present: nonStandardData, vendor, gatekeeper, gateway, mcu no; terminal yes
    w.bits(0b000001, 6)
    w.bits(0, 1)  # terminal: TerminalInfo (extensible) no extension additions
    w.bits(0, 1)  # TerminalInfo.nonStandardData absent
    w.bits(0, 1)  # mc FALSE
    w.bits(0, 1)  # undefinedNode FALSE


def _vendor_identifier(w: PerWriter) -> None:
    """VendorIdentifier (extensible; vendor, productId OPTIONAL, versionId OPTIONAL)."""
    w.bits(0, 1)  # no extension additions
    w.bits(0b00, 2)  # productId, versionId absent
    w.bits(0, 1)  # vendor: H221NonStandard (extensible) no extension additions
    # t35CountryCode (0..255), t35Extension (0..255), manufacturerCode (0..65535); aligned
    w.octets(bytes([0xB5, 0x00]) + struct.pack("!H", 0x0001))


def _h323_user_information(choice: int) -> PerWriter:
    """H323-UserInformation {h323-uu-pdu {h323-message-body CHOICE `choice` ...}}."""
    w = PerWriter()
    w.bits(0, 1)  # H323-UserInformation: no extension additions
    w.bits(0, 1)  # user-data (OPTIONAL) absent
    w.bits(0, 1)  # H323-UU-PDU: no extension additions
    w.bits(0, 1)  # nonStandardData (OPTIONAL) absent
    w.bits(0, 1)  # h323-message-body: root alternative (7 root alternatives: 3 bits)
    w.bits(choice, 3)  # 0 setup, 2 connect
    return w


def setup_uuie_message(call_reference: int) -> bytes:
    """Q.931 SETUP with an H.225.0 Setup-UUIE (no h245Address: the callee gives it)."""
    w = _h323_user_information(choice=0)
    w.bits(0, 1)  # Setup-UUIE: no extension additions
    # 7 OPTIONAL root components: h245Address, sourceAddress, destinationAddress,
    # destCallSignalAddress, destExtraCallInfo, destExtraCRV, callServices: all absent
    w.bits(0, 7)
    _object_identifier(w, H225_V1_OID)  # protocolIdentifier
    _endpoint_type_terminal(w)  # sourceInfo
    w.bits(0, 1)  # activeMC FALSE
    w.octets(CONFERENCE_ID)  # conferenceID OCTET STRING (SIZE(16))
    w.bits(0, 1)  # conferenceGoal (extensible CHOICE, 3 root alternatives): root
    w.bits(0, 2)  # create
    w.bits(0, 1)  # callType (extensible CHOICE, 4 root alternatives): root
    w.bits(0, 2)  # pointToPoint
    ie = bytes([IE_BEARER_CAPABILITY, len(BEARER_SPEECH)]) + BEARER_SPEECH
    return _q931(call_reference, Q931_SETUP, ie, w.to_bytes())


def connect_uuie_message(call_reference: int, h245_ip: str, h245_port: int) -> bytes:
    """Q.931 CONNECT with an H.225.0 Connect-UUIE carrying h245Address."""
    w = _h323_user_information(choice=2)
    w.bits(0, 1)  # Connect-UUIE: no extension additions
    w.bits(0b1, 1)  # the one OPTIONAL root component, h245Address: present
    _object_identifier(w, H225_V1_OID)  # protocolIdentifier
    _transport_address(w, h245_ip, h245_port)  # h245Address
    _endpoint_type_terminal(w)  # destinationInfo
    w.octets(CONFERENCE_ID)  # conferenceID
    # Messages from the side that did not originate the call set the call reference flag.
    return _q931(call_reference | 0x8000, Q931_CONNECT, b"", w.to_bytes())


def _q931(call_reference: int, message_type: int, ies: bytes, uuie: bytes) -> bytes:
    """TPKT (version 3, length) around Q.931: discriminator, 2-octet call reference,
    message type, information elements, and the user-user IE (16-bit length, X.208 coded)."""
    user_user = struct.pack("!BHB", IE_USER_USER, len(uuie) + 1, USER_USER_X208) + uuie
    q931 = struct.pack("!BBHB", Q931_PROTOCOL_DISCRIMINATOR, 2, call_reference, message_type)
    payload = q931 + ies + user_user
    return struct.pack("!BBH", 3, 0, 4 + len(payload)) + payload


def parse_q931(message: bytes) -> tuple[int, bytes]:
    """(message type, H.225.0 user-user contents) of a Q.931 message without its TPKT."""
    if message[0] != Q931_PROTOCOL_DISCRIMINATOR:
        raise ValueError(f"not Q.931: {message[:4].hex()}")
    at = 2 + message[1]
    message_type = message[at]
    at += 1
    while at < len(message):
        ie = message[at]
        if ie == IE_USER_USER:
            length = struct.unpack("!H", message[at + 1 : at + 3])[0]
            return message_type, message[at + 4 : at + 3 + length]
        at += 2 + message[at + 1]
    raise ValueError("no user-user information element")


def connect_h245_address(uuie: bytes) -> tuple[str, int]:
    """The h245Address of a Connect-UUIE as connect_uuie_message lays it out (after the
    10 leading bits and the protocol identifier, at the next octet after 4 choice bits)."""
    oid_at = 2  # 9 bits, aligned to octet 2: the OID's length determinant
    after_oid = oid_at + 1 + uuie[oid_at]
    ip_at = after_oid + 1  # 4 bits of TransportAddress, aligned to the next octet
    ip = str(ipaddress.IPv4Address(uuie[ip_at : ip_at + 4]))
    return ip, struct.unpack("!H", uuie[ip_at + 4 : ip_at + 6])[0]


def registration_request(seq: int, signal: tuple[str, int], ras: tuple[str, int]) -> bytes:
    """RasMessage registrationRequest (RRQ) with one callSignalAddress and one rasAddress."""
    w = PerWriter()
    w.bits(0, 1)  # RasMessage: root alternative (24 root alternatives: 5 bits)
    w.bits(3, 5)  # registrationRequest
    w.bits(0, 1)  # RegistrationRequest: no extension additions
    # 3 OPTIONAL root components: nonStandardData, terminalAlias, gatekeeperIdentifier: absent
    w.bits(0, 3)
    w.octets(struct.pack("!H", seq - 1))  # requestSeqNum INTEGER (1..65535), aligned
    _object_identifier(w, H225_V1_OID)  # protocolIdentifier
    w.bits(0, 1)  # discoveryComplete FALSE (no GRQ was sent)
    w.octets(b"\x01")  # callSignalAddress: SEQUENCE OF, count 1 (aligned length)
    _transport_address(w, *signal)
    w.octets(b"\x01")  # rasAddress: count 1
    _transport_address(w, *ras)
    _endpoint_type_terminal(w)  # terminalType
    _vendor_identifier(w)  # endpointVendor
    return w.to_bytes()


def rrq_call_signal_address(rrq: bytes) -> tuple[str, int]:
    """The first callSignalAddress of an RRQ as registration_request lays it out."""
    oid_at = 4  # 10 bits, aligned: 2 octets; requestSeqNum 2 octets
    count_at = oid_at + 1 + rrq[oid_at] + 1  # after the OID and discoveryComplete's octet
    ip_at = count_at + 2  # the count octet, then 4 choice bits in their own octet
    ip = str(ipaddress.IPv4Address(rrq[ip_at : ip_at + 4]))
    return ip, struct.unpack("!H", rrq[ip_at + 4 : ip_at + 6])[0]


def registration_confirm(seq: int, signal: tuple[str, int]) -> bytes:
    """RasMessage registrationConfirm (RCF): the gatekeeper's answer to an RRQ."""
    w = PerWriter()
    w.bits(0, 1)  # RasMessage: root alternative
    w.bits(4, 5)  # registrationConfirm
    w.bits(0, 1)  # RegistrationConfirm: no extension additions
    # 3 OPTIONAL root components: nonStandardData, terminalAlias, gatekeeperIdentifier: absent
    w.bits(0, 3)
    w.octets(struct.pack("!H", seq - 1))  # requestSeqNum
    _object_identifier(w, H225_V1_OID)  # protocolIdentifier
    w.octets(b"\x01")  # callSignalAddress: the gatekeeper's own, count 1
    _transport_address(w, *signal)
    # endpointIdentifier BMPString (SIZE(1..128)): 7-bit length - 1, aligned UCS-2 characters
    name = "cthm-ep".encode("utf-16-be")
    w.bits(len(name) // 2 - 1, 7)
    w.octets(name)
    return w.to_bytes()


# --- the peers --------------------------------------------------------------------------


def _read_tpkt(conn: socket.socket) -> bytes:
    header = recv_exact(conn, 4)
    if header[0] != 3:
        raise ValueError(f"not a TPKT: {header.hex()}")
    return recv_exact(conn, struct.unpack("!H", header[2:])[0] - 4)


def _try_connect(address: tuple[str, int], timeout: float) -> str:
    """ "connected" (and a byte exchanged), or why not: the second flow's outcome."""
    try:
        with socket.create_connection(address, timeout=timeout) as conn:
            conn.sendall(b"\x00")
            return "connected" if conn.recv(1) == b"\x01" else "closed"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _serve_once(listener: socket.socket, timeout: float) -> dict[str, object]:
    """Accepts one connection within `timeout`, answers its byte; who came (or nobody)."""
    listener.settimeout(timeout)
    try:
        conn, (peer, _) = listener.accept()
    except TimeoutError:
        return {"accepted": False}
    with conn:
        conn.settimeout(timeout)
        if conn.recv(1) == b"\x00":
            conn.sendall(b"\x01")
        return {"accepted": True, "peer": peer}


def run_q931_callee(address: str, h245_port: int, timeout: float, window: float) -> None:
    with listen_tcp(address, Q931_PORT) as signalling, listen_tcp(address, h245_port) as h245:
        emit("ready")
        signalling.settimeout(timeout)
        conn, (peer, _) = signalling.accept()
        with conn:
            conn.settimeout(timeout)
            message_type, _ = parse_q931(_read_tpkt(conn))
            if message_type != Q931_SETUP:
                raise ValueError(f"expected SETUP, got {message_type:#x}")
            conn.sendall(connect_uuie_message(1, address, h245_port))
            emit("control", peer=peer)
            await_go(timeout)
            emit("h245", **_serve_once(h245, window))


def run_q931_caller(server: str, timeout: float, window: float) -> None:
    with socket.create_connection((server, Q931_PORT), timeout=timeout) as conn:
        conn.sendall(setup_uuie_message(1))
        message_type, uuie = parse_q931(_read_tpkt(conn))
        if message_type != Q931_CONNECT:
            raise ValueError(f"expected CONNECT, got {message_type:#x}")
        h245 = connect_h245_address(uuie)
        emit("control", h245_address=list(h245))
        await_go(timeout)
        emit("h245", outcome=_try_connect(h245, window))


def run_gatekeeper(address: str, timeout: float, window: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ras:
        ras.bind((address, RAS_PORT))
        ras.settimeout(timeout)
        emit("ready")
        rrq, peer = ras.recvfrom(2048)
        signal = rrq_call_signal_address(rrq)
        ras.sendto(registration_confirm(1, (address, Q931_PORT)), peer)
        emit("control", peer=peer[0], call_signal_address=list(signal))
        await_go(timeout)
        # Calls to the registered endpoint go to the address its RRQ carried. Where that is
        # not the address the RRQ came from (no NAT helper rewrote it), the router's address
        # with that port is tried too: only a helper's mapping would serve it.
        outcome = _try_connect(signal, window)
        via_router = None if signal[0] == peer[0] else _try_connect((peer[0], signal[1]), window)
        emit("q931", outcome=outcome, via_router=via_router)


def run_endpoint(
    gatekeeper: str, own: str, signal_port: int, timeout: float, window: float
) -> None:
    with (
        listen_tcp(own, signal_port) as q931,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ras,
    ):
        ras.bind((own, 0))
        ras.settimeout(timeout)
        ras.sendto(
            registration_request(1, (own, signal_port), ras.getsockname()),
            (gatekeeper, RAS_PORT),
        )
        answer = ras.recv(2048)
        emit("control", answer=answer[:1].hex())
        await_go(timeout)
        emit("q931", **_serve_once(q931, window))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("q931-callee", "q931-caller", "gatekeeper", "endpoint"))
    parser.add_argument("address", help="own address (servers) or the server's (clients)")
    parser.add_argument("--own", help="endpoint: its own address")
    parser.add_argument("--port", type=int, default=0, help="H.245 or call signal port")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=1.5, help="second flow bound, seconds")
    args = parser.parse_args()
    if args.role == "q931-callee":
        run_q931_callee(args.address, args.port, args.timeout, args.window)
    elif args.role == "q931-caller":
        run_q931_caller(args.address, args.timeout, args.window)
    elif args.role == "gatekeeper":
        run_gatekeeper(args.address, args.timeout, args.window)
    else:
        run_endpoint(args.address, args.own, args.port, args.timeout, args.window)


if __name__ == "__main__":
    main()
