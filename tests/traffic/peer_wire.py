"""What the scripted protocol peers (peers_catalog.py, peers_h323.py, peers_pptp.py) share:
their side of peer_process.PeerProcess (one JSON event a line on stdout, one command a line on
stdin) and the TCP basics. Standard library only: each peer script, run by path inside a
namespace, imports this from its own directory (first on its sys.path).
"""

from __future__ import annotations

import json
import select
import socket
import sys


def emit(event: str, **fields: object) -> None:
    """One event line for the test (PeerProcess.event reads it)."""
    print(json.dumps({"event": event, **fields}), flush=True)


def command(timeout: float) -> list[str]:
    """The next command line from stdin, split; ["quit"] when none comes in time."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return ["quit"]
    line = sys.stdin.readline()
    return line.split() or ["quit"]


def await_go(timeout: float) -> None:
    """Waits for the test's `go`; TimeoutError when anything else or nothing comes in time."""
    if command(timeout) != ["go"]:
        raise TimeoutError("no 'go' from the test")


def recv_exact(conn: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes; ConnectionError if the peer closes first."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def listen_tcp(host: str, port: int) -> socket.socket:
    """A listening IPv4 TCP socket on host:port (SO_REUSEADDR: rounds reuse the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4)
    return sock
