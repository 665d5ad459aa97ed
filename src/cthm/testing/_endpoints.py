"""Process entry points run inside namespaces by cthm.testing.servers (`python -m` this module).

Servers: `ftp-server` and `tftp-server` bind, then create the ready file, then serve until
terminated. Clients: `ftp-get`, `ftp-list`, `tftp-get` and `tcp-probe` print one JSON object
on stdout: {"ok": true, "data": base64} or {"ok": false, "stage": ..., "kind": ..., "error": ...}.
`stage` says how far the client got, so a caller can tell a refused data connection
(stage "list"/"retr", after a successful login) from a broken control path.
"""

from __future__ import annotations

import argparse
import base64
import errno
import ftplib
import io
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def _mark_ready(ready_file: str) -> None:
    # Atomic: the parent never sees a half-written file.
    tmp = f"{ready_file}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, ready_file)


def serve_ftp(args: argparse.Namespace) -> int:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(args.root, perm="elr")  # read-only: list and retrieve

    class Handler(FTPHandler):  # type: ignore[misc]
        # The server connects wherever PORT says, so only the network (router, NAT,
        # helper) decides whether an active data connection succeeds.
        permit_foreign_addresses = True

    Handler.authorizer = authorizer
    # One thread per session: the async FTPServer (pyftpdlib 2.2.0) now and then stalls one of
    # several active-mode sessions running at once (measured on loopback, no firewall: about
    # one round in 30 of three concurrent LISTs times out), and the traffic tests run the
    # forwarded and the router-originated clients concurrently.
    server = ThreadedFTPServer((args.host, args.port), Handler)  # binds and listens here
    _mark_ready(args.ready_file)
    server.serve_forever(timeout=0.5)
    return 0


def serve_tftp(args: argparse.Namespace) -> int:
    import tftpy

    server = tftpy.TftpServer(args.root)
    thread = threading.Thread(
        target=server.listen, args=(args.host, args.port), kwargs={"timeout": 2}, daemon=True
    )
    thread.start()
    if not server.is_running.wait(10):
        print("tftp server did not start listening", file=sys.stderr)
        return 1
    _mark_ready(args.ready_file)
    thread.join()
    return 0


def _ok(data: bytes) -> dict[str, object]:
    return {"ok": True, "data": base64.b64encode(data).decode("ascii")}


def _failed(stage: str, exc: BaseException) -> dict[str, object]:
    return {"ok": False, "stage": stage, "kind": type(exc).__name__, "error": str(exc)}


def ftp_client(args: argparse.Namespace) -> dict[str, object]:
    stage = "connect"
    ftp = ftplib.FTP(timeout=args.timeout)  # noqa: S321 - FTP is what the helper under test parses
    try:
        ftp.connect(args.host, args.port)
        stage = "login"
        ftp.login()  # anonymous
        ftp.set_pasv(False)  # active mode: the server opens the data connection
        buf = bytearray()
        if args.command == "ftp-list":
            stage = "list"
            names: list[str] = []
            ftp.retrlines("NLST", names.append)
            buf.extend("\n".join(names).encode())
        else:
            stage = "retr"
            ftp.retrbinary(f"RETR {args.file}", buf.extend)
        stage = "quit"
        ftp.quit()
        return _ok(bytes(buf))
    except (OSError, EOFError, ftplib.Error) as exc:
        return _failed(stage, exc)
    finally:
        ftp.close()


def tftp_client(args: argparse.Namespace) -> dict[str, object]:
    import tftpy

    out = io.BytesIO()
    try:
        client = tftpy.TftpClient(args.host, args.port)
        client.download(args.file, out, timeout=args.timeout, retries=args.retries)
    except (OSError, tftpy.TftpException) as exc:
        return _failed("transfer", exc)
    return _ok(out.getvalue())


def tcp_probe(args: argparse.Namespace) -> dict[str, object]:
    """Connects and reports the outcome: a firewall drop times out, a closed port refuses."""
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout):
            return _ok(b"connected")
    except TimeoutError as exc:
        return _failed("timeout", exc)
    except ConnectionRefusedError as exc:
        return _failed("refused", exc)
    except OSError as exc:
        stage = "unreachable" if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "error"
        return _failed(stage, exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cthm.testing._endpoints")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, port in (("ftp-server", 21), ("tftp-server", 69)):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--root", required=True)
        p.add_argument("--ready-file", required=True)
    for name, port in (("ftp-get", 21), ("ftp-list", 21), ("tftp-get", 69), ("tcp-probe", 0)):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, default=port)
        p.add_argument("--timeout", type=float, required=True)
        if name in ("ftp-get", "tftp-get"):
            p.add_argument("--file", required=True)
        if name == "tftp-get":
            p.add_argument("--retries", type=int, default=1)
    return parser


_CLIENTS: dict[str, Callable[[argparse.Namespace], dict[str, object]]] = {
    "ftp-get": ftp_client,
    "ftp-list": ftp_client,
    "tftp-get": tftp_client,
    "tcp-probe": tcp_probe,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.command == "ftp-server":
        return serve_ftp(args)
    if args.command == "tftp-server":
        return serve_tftp(args)
    logging.getLogger().setLevel(logging.WARNING)  # clients: keep stderr for real problems
    result = _CLIENTS[args.command](args)
    json.dump(result, sys.stdout)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
