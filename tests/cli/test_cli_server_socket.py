"""The service's listening socket: options every accepted connection inherits."""

from __future__ import annotations

import socket

from cthm.cli.server import bind_listener


def test_accepted_connections_have_nagle_disabled() -> None:
    # With Nagle on, every request on a kept-alive connection stalls ~40 ms (delayed ACK).
    listener = bind_listener("127.0.0.1", 0)
    try:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        accepted, _ = listener.accept()
        try:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            accepted.close()
            client.close()
    finally:
        listener.close()
