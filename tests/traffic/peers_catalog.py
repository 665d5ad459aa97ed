"""Scripted peers for catalog helpers no Debian or PyPI package fits: IRC DCC, SANE, amanda,
and the broadcast helpers (netbios-ns, snmp). Run by path inside a namespace and driven by
tests/traffic/peer_process.PeerProcess: one JSON event per line on stdout, one command per line
on stdin (peer_wire.py, shared with the other scripted peers). Standard library only.

The bytes on the wire are each protocol's own, because the kernel helper parses them:
- IRC: `NICK`/`USER`, the server's `001`, then `PRIVMSG nick :\\x01DCC SEND file IP PORT SIZE\\x01`
  in a segment of its own (nf_conntrack_irc only looks at a payload that starts with PRIVMSG);
  IP is the client's address as a decimal integer. The receiver connects to the IP/PORT it read.
- SANE (big-endian 4-byte words): SANE_NET_INIT (0, version, user name), then SANE_NET_START
  (7, handle) alone in its segment (the helper wants exactly 8 bytes); the reply is status 0,
  the data port, the byte order 0x1234 and an empty resource string. The client then connects
  to that port.
- amanda: a `REQ` datagram to udp/10080; the `REP` carries `CONNECT DATA p MESG p INDEX p`; the
  requester then connects to the DATA port.
- netbios-ns: an NBNS name query (broadcast flag) sent to a subnet broadcast address; the
  responder answers unicast from udp/137 with a positive name query response.
- snmp: an SNMPv2c GetRequest broadcast to udp/161, answered by a GetResponse from udp/161; and
  `snmp-set`, one SetRequest carrying an IpAddress value, received by `snmp-sink`, which reports
  the address it got (nf_nat_snmp_basic rewrites it behind NAT).

Every wait is bounded: --flow-timeout for the protocol's second flow (the connection or answer
that fails without the helper), --timeout for everything else. Commands are read only where a
role says it waits for one.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from typing import Any

from peer_wire import command, emit, listen_tcp, recv_exact

PAYLOAD_BYTE = b"\xa5"


def failure_stage(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, OSError) and exc.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "unreachable"
    return type(exc).__name__


def connect_and_read(host: str, port: int, timeout: float, limit: int = 1 << 20) -> dict[str, Any]:
    """Connects to host:port and reads until EOF; the outcome as event fields."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            data = b""
            while len(data) < limit:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return {"ok": False, "stage": failure_stage(exc), "error": str(exc)}
    return {"ok": True, "size": len(data), "intact": data == PAYLOAD_BYTE * len(data)}


def accept_and_send(listener: socket.socket, size: int, timeout: float) -> dict[str, Any]:
    """Accepts one connection and sends `size` payload bytes; the outcome as event fields."""
    listener.settimeout(timeout)
    try:
        conn, peer = listener.accept()
    except OSError as exc:
        return {"ok": False, "stage": failure_stage(exc), "error": str(exc)}
    with conn:
        conn.settimeout(timeout)
        conn.sendall(PAYLOAD_BYTE * size)
    return {"ok": True, "peer": peer[0]}


def recv_line(conn: socket.socket, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("peer closed")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.rstrip(b"\r")


# --- IRC -------------------------------------------------------------------------------------


def irc_server(args: argparse.Namespace) -> int:
    """Accepts one IRC client, welcomes it, reports the DCC offer it relays, then connects to
    the address the test names (`connect HOST PORT`) and reports what arrived."""
    with listen_tcp(args.host, args.port) as listener:
        emit("listening")
        listener.settimeout(args.timeout)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(args.timeout)
            buffer = bytearray()
            nick = recv_line(conn, buffer).split()[1].decode()
            recv_line(conn, buffer)  # USER
            conn.sendall(f":irc.test 001 {nick} :Welcome {nick}\r\n".encode())
            line = recv_line(conn, buffer).decode("latin-1")
            # PRIVMSG bob :\x01DCC SEND name IP PORT SIZE\x01
            words = line.split(":", 1)[1].strip("\x01").split()
            ip = socket.inet_ntoa(struct.pack("!I", int(words[3])))
            emit("dcc", line=line, ip=ip, port=int(words[4]), size=int(words[5]))
            while True:
                cmd = command(args.timeout)
                if cmd[0] != "connect":
                    return 0
                emit("dcc-data", **connect_and_read(cmd[1], int(cmd[2]), args.flow_timeout))


def irc_client(args: argparse.Namespace) -> int:
    """Registers with the server, offers a file by DCC SEND from --dcc-port, and sends it to
    whoever connects there within --timeout."""
    own = socket.inet_aton(args.own_ip)
    server = (args.server, args.port)
    with (
        listen_tcp("0.0.0.0", args.dcc_port) as listener,
        socket.create_connection(server, timeout=args.timeout) as conn,
    ):
        conn.settimeout(args.timeout)
        conn.sendall(b"NICK alice\r\nUSER alice 0 * :Alice\r\n")
        buffer = bytearray()
        welcome = recv_line(conn, buffer)
        # After the welcome, so that PRIVMSG starts a segment of its own.
        dcc = f"\x01DCC SEND payload.bin {struct.unpack('!I', own)[0]} {args.dcc_port} "
        dcc += f"{args.size}\x01"
        conn.sendall(f"PRIVMSG bob :{dcc}\r\n".encode("latin-1"))
        emit("offered", welcome=welcome.decode("latin-1"))
        emit("dcc-sent", **accept_and_send(listener, args.size, args.timeout))
    return 0


# --- SANE ------------------------------------------------------------------------------------

SANE_NET_INIT = 0
SANE_NET_START = 7
SANE_VERSION = (1 << 24) | (0 << 16) | 3  # SANE_VERSION_CODE(1, 0, 3)


def sane_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("!I", len(raw)) + raw


def sane_server(args: argparse.Namespace) -> int:
    """saned's side: INIT, then START answered with --data-port, then serves image data to the
    first connection on that port within --timeout."""
    with (
        listen_tcp(args.host, args.port) as listener,
        listen_tcp(args.host, args.data_port) as data,
    ):
        emit("listening")
        listener.settimeout(args.timeout)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(args.timeout)
            code, _version, length = struct.unpack("!III", recv_exact(conn, 12))
            assert code == SANE_NET_INIT, code
            recv_exact(conn, length)  # user name
            conn.sendall(struct.pack("!II", 0, SANE_VERSION))  # status GOOD, version
            code, handle = struct.unpack("!II", recv_exact(conn, 8))
            assert code == SANE_NET_START, code
            # status GOOD, port, byte order 0x1234, resource: null string
            conn.sendall(struct.pack("!IIII", 0, args.data_port, 0x1234, 0))
            emit("started", handle=handle, port=args.data_port)
            # saned sends records: a 4-byte length, then the bytes.
            emit("data-served", **accept_and_send(data, args.size, args.timeout))
    return 0


def sane_client(args: argparse.Namespace) -> int:
    """scanimage's side: INIT, START, then on `data` connects to the port the reply named."""
    with socket.create_connection((args.server, args.port), timeout=args.timeout) as conn:
        conn.settimeout(args.timeout)
        conn.sendall(struct.pack("!II", SANE_NET_INIT, SANE_VERSION) + sane_string("alice"))
        status, version = struct.unpack("!II", recv_exact(conn, 8))
        conn.sendall(struct.pack("!II", SANE_NET_START, 0))  # handle 0, from SANE_NET_OPEN
        status, port, byte_order, _resource = struct.unpack("!IIII", recv_exact(conn, 16))
        emit("port", status=status, port=port, byte_order=byte_order, version=version)
        cmd = command(args.timeout)
        if cmd[0] == "data":
            emit("data", **connect_and_read(args.server, port, args.flow_timeout))
    return 0


# --- amanda ----------------------------------------------------------------------------------


def amanda_server(args: argparse.Namespace) -> int:
    """amandad on the host being backed up: answers a REQ with a REP naming its three TCP
    ports, then sends backup data to the first connection on the DATA port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    listeners = [listen_tcp(args.host, args.data_port + i) for i in range(3)]
    try:
        emit("listening")
        sock.settimeout(args.timeout)
        request, peer = sock.recvfrom(4096)
        handle = request.split(b"HANDLE ")[1].split()[0].decode()
        ports = [args.data_port + i for i in range(3)]
        reply = (
            f"Amanda 2.6 REP HANDLE {handle} SEQ 1\n"
            f"CONNECT DATA {ports[0]} MESG {ports[1]} INDEX {ports[2]}\n"
            "OPTIONS features=9ffe00;\n"
        )
        sock.sendto(reply.encode(), peer)
        emit("replied", request=request.decode(errors="replace"), ports=ports)
        emit("data-served", **accept_and_send(listeners[0], args.size, args.timeout))
    finally:
        sock.close()
        for listener in listeners:
            listener.close()
    return 0


def amanda_client(args: argparse.Namespace) -> int:
    """The amanda server's side: REQ for sendbackup, then on `data` connects to DATA."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        request = (
            "Amanda 2.6 REQ HANDLE 000-00000001 SEQ 1\n"
            "SERVICE sendbackup\n"
            "OPTIONS features=9ffe00;hostname=backup;\n"
            "GNUTAR /etc 0 1970:1:1:0:0:0 OPTIONS |;auth=BSD;\n"
        )
        sock.sendto(request.encode(), (args.server, args.port))
        reply, _ = sock.recvfrom(4096)
        text = reply.decode(errors="replace")
        words = text.split("CONNECT ", 1)[1].split("\n", 1)[0].split()
        ports = dict(zip(words[::2], (int(p) for p in words[1::2]), strict=True))
        emit("rep", text=text, ports=ports)
        cmd = command(args.timeout)
        if cmd[0] == "data":
            emit("data", **connect_and_read(args.server, ports["DATA"], args.flow_timeout))
    return 0


# --- broadcast helpers: netbios-ns, snmp ------------------------------------------------------

NB_NAME = "WORKGROUP"


def nb_encode(name: str, suffix: int = 0x00) -> bytes:
    """NetBIOS first-level encoding (RFC 1001 14.1): 16 bytes as 32 letters, length-prefixed."""
    raw = name.upper().ljust(15).encode()[:15] + bytes([suffix])
    letters = bytes(b for c in raw for b in (0x41 + (c >> 4), 0x41 + (c & 0x0F)))
    return bytes([32]) + letters + b"\0"


def nbns_query(txid: int) -> bytes:
    # Header: id, flags 0x0110 (query, recursion desired, broadcast), 1 question.
    header = struct.pack("!HHHHHH", txid, 0x0110, 1, 0, 0, 0)
    return header + nb_encode(NB_NAME) + struct.pack("!HH", 0x0020, 0x0001)  # NB, IN


def nbns_response(query: bytes, address: str) -> bytes:
    txid = struct.unpack("!H", query[:2])[0]
    header = struct.pack("!HHHHHH", txid, 0x8500, 0, 1, 0, 0)  # response, AA, RD; 1 answer
    answer = nb_encode(NB_NAME) + struct.pack("!HHIH", 0x0020, 0x0001, 300, 6)
    return header + answer + struct.pack("!H", 0x0000) + socket.inet_aton(address)


def ber(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def ber_int(value: int) -> bytes:
    return ber(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def ber_oid(oid: str) -> bytes:
    parts = [int(p) for p in oid.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.insert(0, 0x80 | (part & 0x7F))
            part >>= 7
        body += bytes(chunk)
    return ber(0x06, body)


SYS_NAME = "1.3.6.1.2.1.1.5.0"
# ipAdEntAddr of 198.18.1.2 (IP-MIB): an object whose value is an IpAddress.
IP_AD_ENT_ADDR = "1.3.6.1.2.1.4.20.1.1.198.18.1.2"


def snmp_message(pdu_tag: int, request_id: int, name: str, value: bytes) -> bytes:
    """An SNMPv2c message (version 1, community "public") with one variable binding."""
    varbind = ber(0x30, ber_oid(name) + value)
    pdu = ber(pdu_tag, ber_int(request_id) + ber_int(0) + ber_int(0) + ber(0x30, varbind))
    return ber(0x30, ber_int(1) + ber(0x04, b"public") + pdu)


def snmp_get(request_id: int) -> bytes:
    return snmp_message(0xA0, request_id, SYS_NAME, ber(0x05, b""))  # GetRequest, NULL


def ber_read(data: bytes, at: int) -> tuple[int, bytes, int]:
    """The TLV at `at`: (tag, content, offset after it)."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    return tag, data[at : at + length], at + length


def snmp_response(request: bytes, text: str) -> bytes:
    """The GetResponse to a GetRequest, with the request's id."""
    _, message, _ = ber_read(request, 0)
    _, _, at = ber_read(message, 0)  # version
    _, _, at = ber_read(message, at)  # community
    _, pdu, _ = ber_read(message, at)
    _, request_id, _ = ber_read(pdu, 0)
    return snmp_message(0xA2, int.from_bytes(request_id, "big"), SYS_NAME, ber(0x04, text.encode()))


def bcast_query(args: argparse.Namespace) -> int:
    """Broadcasts one netbios-ns or snmp query from an ephemeral port; on `listen`, reports the
    first answer (or none) within --timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind((args.own_ip, 0))
        query = nbns_query(0x5A17) if args.protocol == "netbios-ns" else snmp_get(0x5A17)
        sock.sendto(query, (args.broadcast, args.port))
        emit("sent", sport=sock.getsockname()[1])
        cmd = command(args.timeout)
        if cmd[0] != "listen":
            return 0
        sock.settimeout(args.flow_timeout)
        try:
            answer, peer = sock.recvfrom(4096)
        except OSError as exc:
            emit("answer", ok=False, stage=failure_stage(exc))
            return 0
        emit("answer", ok=True, peer=peer[0], sport=peer[1], size=len(answer))
    return 0


def bcast_responder(args: argparse.Namespace) -> int:
    """Receives the broadcast query on --port; on `reply`, answers it unicast from --port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", args.port))
        emit("listening")
        sock.settimeout(args.timeout)
        query, peer = sock.recvfrom(4096)
        emit("query", peer=peer[0], sport=peer[1], size=len(query))
        cmd = command(args.timeout)
        if cmd[0] == "reply":
            if args.protocol == "netbios-ns":
                sock.sendto(nbns_response(query, args.own_ip), peer)
            else:
                sock.sendto(snmp_response(query, "server"), peer)
            emit("replied")
    return 0


def snmp_set(args: argparse.Namespace) -> int:
    """Sends one SetRequest whose value is the IpAddress --value, from an ephemeral port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        value = ber(0x40, socket.inet_aton(args.value))  # [APPLICATION 0] IpAddress
        sock.sendto(snmp_message(0xA3, 0x2B1, IP_AD_ENT_ADDR, value), (args.server, args.port))
        emit("sent")
    return 0


def snmp_sink(args: argparse.Namespace) -> int:
    """Receives one SNMP message and reports the IpAddress value it carries."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.host, args.port))
        emit("listening")
        sock.settimeout(args.timeout)
        try:
            message, peer = sock.recvfrom(4096)
        except OSError as exc:
            emit("received", ok=False, stage=failure_stage(exc))
            return 0
        at = message.rindex(b"\x40\x04")  # the value, last in the one varbind
        address = socket.inet_ntoa(message[at + 2 : at + 6])
        emit("received", ok=True, peer=peer[0], address=address)
    return 0


ROLES = {
    "irc-server": irc_server,
    "irc-client": irc_client,
    "sane-server": sane_server,
    "sane-client": sane_client,
    "amanda-server": amanda_server,
    "amanda-client": amanda_client,
    "bcast-query": bcast_query,
    "bcast-responder": bcast_responder,
    "snmp-set": snmp_set,
    "snmp-sink": snmp_sink,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--server", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--own-ip", default="0.0.0.0")
    parser.add_argument("--dcc-port", type=int, default=0)
    parser.add_argument("--data-port", type=int, default=0)
    parser.add_argument("--broadcast", default="")
    parser.add_argument("--protocol", default="netbios-ns")
    parser.add_argument("--value", default="")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--flow-timeout", type=float, default=1.0)
    args = parser.parse_args()
    return ROLES[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
