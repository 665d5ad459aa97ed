"""Running an ASGI app under uvicorn on a socket we bound, until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import uvicorn

from cthm.cli.errors import ServiceError

BACKLOG = 2048
GRACEFUL_SHUTDOWN_SECONDS = 10


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Binding here, not in uvicorn, turns "address in use" into one
    clear error before anything starts, and makes "listening" true when we print it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this. Without it a kept-alive client waits ~40 ms per request:
        # the response's second segment sits behind Nagle until the client's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ServiceError(f"cannot listen on {format_address(host, port)}: {reason}") from exc
    return sock


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listener_url(sock: socket.socket, *, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    return f"{'https' if tls else 'http'}://{format_address(host, port)}"


def uvicorn_log_level(level: str) -> int:
    # uvicorn's INFO lines (startup banner, one line per request) would drown our own; they show
    # only when cthm runs at DEBUG.
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    return numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)


def check_tls_files(cert_file: Path, key_file: Path) -> None:
    """Loads the pair once before serving, so a bad certificate is one clear error at start."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ServiceError(
            f"cannot use TLS certificate {cert_file} with key {key_file}: {reason}"
        ) from exc


def run_server(
    app: Any, sock: socket.socket, *, log_level: str, tls: tuple[Path, Path] | None = None
) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully and returns normally.
    tls: (certificate file, key file) to serve HTTPS."""
    level = uvicorn_log_level(log_level)
    config = uvicorn.Config(
        app,
        log_level=level,
        access_log=level <= logging.DEBUG,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        # Only modern protocol versions: TLS 1.2 at least.
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
    )
    server = uvicorn.Server(config)
    # After its graceful shutdown uvicorn raises the captured signal again against the handler
    # that was installed before it started; with the default one SIGTERM would kill the process
    # before the caller closes the store. Installing uvicorn's own handler there makes that a
    # no-op, and also covers a signal arriving before uvicorn installs its handlers.
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in handled}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
