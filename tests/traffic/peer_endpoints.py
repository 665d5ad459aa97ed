"""Protocol peers for IPv4 and IPv6, run as a script inside a namespace (`python THIS CMD ...`).

The shipped harness (cthm.testing._endpoints, tftpy) is IPv4-only for TFTP and active-only for
FTP; these peers take either family from the address they are given:

- `tftp-server`: RFC 1350 read requests, octet mode; each transfer answers from a new socket
  on a new port (as every TFTP server does), which is what needs the tftp helper.
- `tftp-get`, `ftp-get` (`--mode active|passive`: EPRT/EPSV over IPv6, PORT/PASV over IPv4),
  `udp-recv` (waits for one datagram, e.g. an RTP packet), `udp-send`.

Servers create `--ready-file` once bound. Clients print one JSON object on stdout:
{"ok": true, "data": base64[, "peer": address]} or {"ok": false, "stage", "kind", "error"},
where `stage` says how far they got (as cthm.testing._endpoints does). Every wait is bounded.
No imports from cthm: the script runs with any Python 3.11.
"""

from __future__ import annotations

import argparse
import base64
import ftplib
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

_BLOCK = 512
_OP_RRQ, _OP_DATA, _OP_ACK, _OP_ERROR = 1, 3, 4, 5


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _mark_ready(ready_file: str) -> None:
    tmp = f"{ready_file}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, ready_file)


def _ok(data: bytes, **extra: str) -> dict[str, object]:
    return {"ok": True, "data": base64.b64encode(data).decode("ascii"), **extra}


def _failed(stage: str, exc: BaseException) -> dict[str, object]:
    return {"ok": False, "stage": stage, "kind": type(exc).__name__, "error": str(exc)}


# TFTP


def serve_tftp(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    sock = socket.socket(_family(args.host), socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    _mark_ready(args.ready_file)
    while True:
        packet, peer = sock.recvfrom(2048)
        threading.Thread(target=_tftp_transfer, args=(root, args.host, packet, peer)).start()


def _tftp_transfer(root: Path, host: str, packet: bytes, peer: tuple[str, int]) -> None:
    # A new socket, so a new source port: the reply the tftp helper's expectation admits.
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        sock.settimeout(1.0)
        opcode = struct.unpack("!H", packet[:2])[0]
        name = packet[2:].split(b"\0")[0].decode(errors="replace")
        path = (root / name).resolve()
        if opcode != _OP_RRQ or path.parent != root or not path.is_file():
            sock.sendto(struct.pack("!HH", _OP_ERROR, 1) + b"not found\0", peer)
            return
        data = path.read_bytes()
        for block in range(1, len(data) // _BLOCK + 2):
            chunk = data[(block - 1) * _BLOCK : block * _BLOCK]
            for _ in range(3):  # bounded resends
                sock.sendto(struct.pack("!HH", _OP_DATA, block & 0xFFFF) + chunk, peer)
                try:
                    ack, _ = sock.recvfrom(16)
                except TimeoutError:
                    continue
                if struct.unpack("!HH", ack[:4]) == (_OP_ACK, block & 0xFFFF):
                    break
            else:
                return


def tftp_get(args: argparse.Namespace) -> dict[str, object]:
    request = struct.pack("!H", _OP_RRQ) + args.file.encode() + b"\0octet\0"
    out = bytearray()
    with socket.socket(_family(args.host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        try:
            expected, peer = 1, None
            last: tuple[bytes, tuple[str, int]] = (request, (args.host, args.port))
            sock.sendto(*last)
            while True:
                for attempt in range(args.retries + 1):
                    try:
                        packet, source = sock.recvfrom(_BLOCK + 4)
                        break
                    except TimeoutError:
                        if attempt == args.retries:
                            raise
                        sock.sendto(*last)
                opcode, block = struct.unpack("!HH", packet[:4])
                if opcode == _OP_ERROR:
                    raise OSError(f"TFTP error {block}: {packet[4:].rstrip(bytes(1)).decode()}")
                if peer is None:
                    peer = source
                if opcode != _OP_DATA or source != peer or block != expected & 0xFFFF:
                    continue
                out.extend(packet[4:])
                last = (struct.pack("!HH", _OP_ACK, block), peer)
                sock.sendto(*last)
                if len(packet) - 4 < _BLOCK:
                    return _ok(bytes(out))
                expected += 1
        except OSError as exc:
            return _failed("transfer", exc)


# FTP


def ftp_get(args: argparse.Namespace) -> dict[str, object]:
    stage = "connect"
    ftp = ftplib.FTP(timeout=args.timeout)  # FTP is what the helper under test parses
    try:
        ftp.connect(args.host, args.port)
        stage = "login"
        ftp.login()  # anonymous
        # ftplib sends EPRT/EPSV on an IPv6 control connection, PORT/PASV on IPv4.
        ftp.set_pasv(args.mode == "passive")
        stage = "retr"
        buf = bytearray()
        ftp.retrbinary(f"RETR {args.file}", buf.extend)
        stage = "quit"
        ftp.quit()
        return _ok(bytes(buf))
    except (OSError, EOFError, ftplib.Error) as exc:
        return _failed(stage, exc)
    finally:
        ftp.close()


# UDP (media)


def udp_recv(args: argparse.Namespace) -> dict[str, object]:
    with socket.socket(_family(args.host), socket.SOCK_DGRAM) as sock:
        sock.bind((args.host, args.port))
        sock.settimeout(args.timeout)
        _mark_ready(args.ready_file)
        try:
            data, peer = sock.recvfrom(2048)
        except TimeoutError as exc:
            return _failed("timeout", exc)
        return _ok(data, peer=peer[0])


def udp_send(args: argparse.Namespace) -> dict[str, object]:
    errors = []
    with socket.socket(_family(args.host), socket.SOCK_DGRAM) as sock:
        for _ in range(args.count):
            try:
                sock.sendto(args.payload.encode(), (args.host, args.port))
            except OSError as exc:  # e.g. no route: the receiver's side decides the outcome
                errors.append(str(exc))
            time.sleep(args.interval)
    return _ok(b"", errors="; ".join(sorted(set(errors))))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peer_endpoints.py")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("tftp-server")
    server.add_argument("--root", required=True)
    get = sub.add_parser("tftp-get")
    get.add_argument("--retries", type=int, default=1)
    ftp = sub.add_parser("ftp-get")
    ftp.add_argument("--mode", choices=("active", "passive"), required=True)
    recv = sub.add_parser("udp-recv")
    send = sub.add_parser("udp-send")
    send.add_argument("--payload", required=True)
    send.add_argument("--count", type=int, default=5)
    send.add_argument("--interval", type=float, default=0.05)
    for p in (server, get, ftp, recv, send):
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
    for p in (server, recv):
        p.add_argument("--ready-file", required=True)
    for p in (get, ftp, recv):
        p.add_argument("--timeout", type=float, required=True)
    for p in (get, ftp):
        p.add_argument("--file", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "tftp-server":
        return serve_tftp(args)
    clients = {"tftp-get": tftp_get, "ftp-get": ftp_get, "udp-recv": udp_recv, "udp-send": udp_send}
    result = clients[args.command](args)
    json.dump(result, sys.stdout)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
