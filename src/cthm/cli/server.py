"""Running an ASGI app under uvicorn on a socket we bound, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from cthm.cli import redaction
from cthm.cli.errors import ServiceError
from cthm.cli.frontdoor import FrontDoor

if TYPE_CHECKING:
    from cthm.settings import Settings

BACKLOG = 2048
GRACEFUL_SHUTDOWN_SECONDS = 10
# Descriptors kept for everything but API clients: the agent (namespaces, nft, iptables
# pipes), the database, logs. The connection cap is lowered to leave them free.
DESCRIPTOR_RESERVE = 256
# Without a hard limit, how far the soft one is raised.
UNLIMITED_DESCRIPTORS = 1 << 16

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limits:
    """What protects the server from its clients (settings header_timeout, max_connections,
    forwarded_allow_ips)."""

    header_timeout: float = 5.0
    max_connections: int = 1000
    forwarded_allow_ips: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.header_timeout, settings.max_connections, settings.forwarded_allow_ips)


def raise_descriptor_limit() -> int:
    """Raises this process's soft limit on open files to its hard limit; returns the soft limit
    in force afterwards. The default soft limit (often 1024) is far below what is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, UNLIMITED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else UNLIMITED_DESCRIPTORS


def connection_budget(descriptors: int, wanted: int) -> tuple[int, int]:
    """(max connections, accept backlog) that fit in `descriptors` open files: asyncio may
    accept a whole backlog before the first of them is counted, and accept another before the
    connections that made room are really closed (a close takes effect a loop turn later), so
    two backlogs are kept free, and the reserve beyond them."""
    backlog = max(16, min(BACKLOG, descriptors // 8))
    return max(1, min(wanted, descriptors - 2 * backlog - DESCRIPTOR_RESERVE)), backlog


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


class GuardedServer(uvicorn.Server):
    """uvicorn's server with the front door's event-loop error handler (bounded log lines), and
    with TLS handshakes held to the same deadline as request headers."""

    def __init__(
        self,
        config: uvicorn.Config,
        door: FrontDoor,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.door = door
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info(
            "shutting down: no new connections; open requests get %gs to finish",
            GRACEFUL_SHUTDOWN_SECONDS,
        )
        # Before uvicorn waits for open requests: waiting long polls answer now instead of
        # holding the shutdown up until they are cut off.
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.door.loop_exception)
        if self.config.ssl is not None:
            # uvicorn does not pass a handshake timeout (asyncio's default is 60 s); a client
            # that connects and never finishes its handshake is a half-sent request too.
            create_server = loop.create_server
            loop.create_server = functools.partial(  # type: ignore[method-assign]
                create_server, ssl_handshake_timeout=self.door.header_timeout
            )
        await super().startup(sockets)


def run_server(
    app: Any,
    sock: socket.socket,
    *,
    log_level: str,
    tls: tuple[Path, Path] | None = None,
    limits: Limits | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully and returns normally.
    tls: (certificate file, key file) to serve HTTPS. limits: see `Limits` (default: its
    defaults). on_shutdown: called as the shutdown begins, before open requests are awaited."""
    limits = limits or Limits()
    level = uvicorn_log_level(log_level)
    max_connections, backlog = connection_budget(raise_descriptor_limit(), limits.max_connections)
    if max_connections < limits.max_connections:
        log.warning(
            "max_connections lowered from %d to %d: the open-file limit leaves no more",
            limits.max_connections,
            max_connections,
        )
    door = FrontDoor(header_timeout=limits.header_timeout, max_connections=max_connections)
    config = uvicorn.Config(
        app,
        http=door.protocol_class(),
        # uvloop (libuv): the event loop's own work per request (its wake-ups, the socket
        # writes, the worker threads' call_soon_threadsafe) in C; ~6% of a create's CPU.
        loop="uvloop",
        backlog=backlog,
        log_level=level,
        # uvicorn's records go through cthm's handler (cli/logs.py: UTC times, text or JSON),
        # not handlers of its own.
        log_config=None,
        access_log=level <= logging.DEBUG,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        # The client is the TCP peer unless the operator names the proxies to believe: a
        # forged X-Forwarded-For must not make one client look like many (the failure throttle
        # and the audit trail key on the client).
        proxy_headers=limits.forwarded_allow_ips is not None,
        forwarded_allow_ips=limits.forwarded_allow_ips or "",
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
        # Only modern protocol versions: TLS 1.2 at least.
        ssl_version=ssl.PROTOCOL_TLS_SERVER,
    )
    # uvicorn.Config set up uvicorn's loggers just now; the filter goes on after it.
    redaction.install()
    server = GuardedServer(config, door, on_shutdown)
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
