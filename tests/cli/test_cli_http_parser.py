"""`cthm serve`'s HTTP parser (uvicorn's httptools protocol behind the front door): a request
head is bounded (cli.frontdoor.MAX_HEAD_BYTES; h11 let one through at any size when it arrived
whole), and pipelined requests on one connection are all answered, in order."""

from __future__ import annotations

import socket

from cthm_cli_harness import ServerProcess

from cthm.cli.frontdoor import MAX_HEAD_BYTES

TIMEOUT = 10.0


def exchange(server: ServerProcess, raw: bytes) -> bytes:
    """Sends `raw` on a new connection and reads until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def health(extra_header: bytes = b"", *, close: bool = True) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return b"GET /healthz HTTP/1.1\r\nHost: cthm\r\n" + extra_header + connection + b"\r\n"


def test_a_head_over_the_bound_is_a_400_and_the_connection_closes(server: ServerProcess) -> None:
    padding = b"X-Padding: " + b"a" * MAX_HEAD_BYTES + b"\r\n"
    answer = exchange(server, health(padding, close=False))  # the server must close it
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1") == 1


def test_a_long_url_counts_toward_the_bound(server: ServerProcess) -> None:
    path = b"/healthz?" + b"q" * (MAX_HEAD_BYTES + 1)
    answer = exchange(server, b"GET " + path + b" HTTP/1.1\r\nHost: cthm\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


def test_a_head_within_the_bound_is_answered(server: ServerProcess) -> None:
    padding = b"X-Padding: " + b"a" * (MAX_HEAD_BYTES // 2) + b"\r\n"
    answer = exchange(server, health(padding))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_pipelined_requests_are_all_answered_in_order(server: ServerProcess) -> None:
    answer = exchange(
        server,
        health(close=False) + b"GET /v2.0/nothing-here HTTP/1.1\r\nHost: cthm\r\n\r\n" + health(),
    )
    statuses = [part[:3] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200", b"401", b"200"]
