"""`cthm serve`: the API, its store and (unless --no-agent) the in-process agent on this
machine."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cthm.cli.errors import (
    DataDirInUse,
    Failure,
    ServiceError,
    ServiceSettingError,
    SettingsFailure,
)

if TYPE_CHECKING:
    from pydantic import ValidationError

    from cthm.settings import Settings


F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("cthm.serve")


def data_dir_option(help: str) -> Callable[[F], F]:
    """`--data-dir`: the server's data directory (`cthm serve`, and `cthm token recover`, which
    works on the same files)."""
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help=help
    )


def database_url_file_option() -> Callable[[F], F]:
    """`--database-url-file`: the database URL from a file only its owner may read (`cthm
    serve`, `cthm db`)."""
    return click.option(
        "--database-url-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File holding the database URL (with its password) on one line; mode 0600, "
        "owned by this user. [env CTHM_DATABASE_URL_FILE; or the URL in CTHM_DATABASE_URL]",
    )


def config_option(help: str) -> Callable[[F], F]:
    """`--config`: the server's TOML settings file, as the `config_file` parameter."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


@click.command("serve")
@data_dir_option("Where the database lives; created (mode 0700) if missing. [env CTHM_DATA_DIR]")
@click.option(
    "--host",
    default=None,
    help="Address to listen on; beyond loopback needs TLS. [127.0.0.1; env CTHM_HOST]",
)
@click.option("--port", type=int, default=None, help="TCP port to listen on. [9797; env CTHM_PORT]")
@config_option("TOML settings file. [env CTHM_CONFIG]")
@database_url_file_option()
@click.option(
    "--backend",
    type=click.Choice(["nftables", "iptables", "auto"]),
    default=None,
    help="How rules reach the kernel; auto: what the node's routers use, decided at start. "
    "[nftables; env CTHM_BACKEND]",
)
@click.option(
    "--iptables-flavour",
    type=click.Choice(["default", "nft", "legacy"]),
    default=None,
    help="iptables tools: the system's (where both are installed, the flavour holding the "
    "node's rules), iptables-nft or iptables-legacy. [default; env CTHM_IPTABLES_FLAVOUR]",
)
@click.option(
    "--resync-interval",
    type=float,
    default=None,
    help="Seconds between full agent resyncs. [60; env CTHM_RESYNC_INTERVAL]",
)
@click.option(
    "--no-agent",
    is_flag=True,
    default=False,
    help="Serve the API only: node agents (cthm agent run) program the kernels. "
    "[env CTHM_AGENT_ENABLED=false]",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="API processes sharing the listening socket (more than 1 needs --no-agent).",
)
@click.option(
    "--agent-down-time",
    type=float,
    default=None,
    help="Seconds without a report after which a node agent is dead (alive false). "
    "[75; env CTHM_AGENT_DOWN_TIME]",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM certificate: serve HTTPS (with --tls-key). [env CTHM_TLS_CERT_FILE]",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PEM private key for --tls-cert. [env CTHM_TLS_KEY_FILE]",
)
@click.option(
    "--quota-bindings-per-project",
    type=int,
    default=None,
    help="Conntrack helpers a project may have in all; -1: unlimited. "
    "[1000; env CTHM_QUOTA_BINDINGS_PER_PROJECT]",
)
@click.option(
    "--quota-bindings-per-router",
    type=int,
    default=None,
    help="Conntrack helpers one router may have; -1: unlimited. "
    "[100; env CTHM_QUOTA_BINDINGS_PER_ROUTER]",
)
@click.option(
    "--allow-insecure-listen",
    is_flag=True,
    default=None,
    help="Listen beyond loopback WITHOUT TLS (tokens cross the network in clear).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="cthm's log level; INFO has the access log (cthm.access), DEBUG adds uvicorn's. "
    "[INFO; env CTHM_LOG_LEVEL]",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default=None,
    help="Log lines as text or as one JSON object each; times in UTC. [text; env CTHM_LOG_FORMAT]",
)
@click.option(
    "--header-timeout",
    type=float,
    default=None,
    help="Seconds a client has to send a request's line and headers, and as long again for "
    "its body. [5; env CTHM_HEADER_TIMEOUT]",
)
@click.option(
    "--max-connections",
    type=int,
    default=None,
    help="Open client connections at most; beyond it the oldest idle or incomplete one is "
    "closed. [1000; env CTHM_MAX_CONNECTIONS]",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Proxies (addresses or networks, comma-separated) whose X-Forwarded-For is believed. "
    "[none; env CTHM_FORWARDED_ALLOW_IPS]",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help="Also serve GET /metrics WITHOUT a token on this address (a port alone: 127.0.0.1, "
    "loopback; another address only when written out). [none; env CTHM_METRICS_LISTEN]",
)
def serve(
    data_dir: Path | None,
    host: str | None,
    port: int | None,
    config_file: Path | None,
    database_url_file: Path | None,
    resync_interval: float | None,
    backend: str | None,
    iptables_flavour: str | None,
    no_agent: bool,
    workers: int,
    agent_down_time: float | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    quota_bindings_per_project: int | None,
    quota_bindings_per_router: int | None,
    allow_insecure_listen: bool | None,
    log_level: str | None,
    log_format: str | None,
    header_timeout: float | None,
    max_connections: int | None,
    forwarded_allow_ips: str | None,
    metrics_listen: str | None,
) -> None:
    """Run the cthm API server until SIGTERM or Ctrl-C."""
    settings = _settings(
        config_file,
        data_dir=data_dir,
        host=host,
        port=port,
        database_url_file=database_url_file,
        resync_interval=resync_interval,
        backend=backend,
        iptables_flavour=iptables_flavour,
        # Unset: the environment or the config file decides (CTHM_AGENT_ENABLED).
        agent_enabled=False if no_agent else None,
        agent_down_time=agent_down_time,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        quota_bindings_per_project=quota_bindings_per_project,
        quota_bindings_per_router=quota_bindings_per_router,
        allow_insecure_listen=allow_insecure_listen,
        log_level=log_level.upper() if log_level else None,
        log_format=log_format.lower() if log_format else None,
        header_timeout=header_timeout,
        max_connections=max_connections,
        forwarded_allow_ips=forwarded_allow_ips,
        metrics_listen=metrics_listen,
    )
    if workers > 1 and settings.metrics_listen is not None:
        # Each worker counts its own requests: one address cannot speak for all of them.
        raise SettingsFailure(f"--metrics-listen needs --workers 1 (not {workers})")
    if workers > 1 and settings.agent_enabled:
        # The agent owns the kernel tables of this host: one process, never one per worker.
        raise SettingsFailure(
            f"--workers {workers} needs --no-agent (the in-process agent runs in one process)"
        )
    configure_logging(settings.log_level, with_pid=workers > 1, log_format=settings.log_format)
    # Imported here: the server stack costs half a second that client commands need not pay.
    from cthm.cli.service import Service, StartCancelled, listen, redact_url

    where = f"data in {settings.data_dir}"
    if settings.database_url or settings.database_url_file:
        where += f", database {redact_url(settings.effective_database_url)}"
    if not settings.agent_enabled:
        where += "; no agent here: node agents (cthm agent run) program the kernels"

    try:
        # First: a port in use or a bad certificate refuses the start before it does anything.
        sock = listen(settings)
    except ServiceError as exc:
        raise Failure(exc.message) from None
    try:
        with Service(settings) as service:
            # What auto chose is part of where this server stands (the log says it always).
            choice = service.backend_choice
            if choice is not None and choice.auto:
                where += f"; backend {choice.label}, chosen by auto: {choice.reason}"

            def announce(url: str) -> None:
                click.echo(f"cthm listening on {url} ({where})")

            if workers > 1:
                where += f"; {workers} worker processes"
                code = service.serve_workers(workers, on_listening=announce, sock=sock)
                if code != 0:
                    raise Failure("an API worker ended on its own; the server stopped")
            else:
                service.serve(on_listening=announce, sock=sock)
        # Service's exit stopped the agent (in-flight reconciles finished) and closed the store.
        log.info("cthm serve stopped")
    except StartCancelled:  # stopped while waiting for the database: a normal stop, exit 0
        return
    except (ServiceSettingError, DataDirInUse) as exc:  # exit 2: nothing was started
        raise SettingsFailure(exc.message) from None
    except ServiceError as exc:
        raise Failure(exc.message) from None
    finally:
        sock.close()  # idempotent; serve() closes it too


def configure_logging(level: str, *, with_pid: bool = False, log_format: str = "text") -> None:
    """with_pid: each line names its process (several API workers write to one stream).
    log_format: text or json (cli/logs.py); UTC times either way."""
    from cthm.cli import logs

    logs.configure(level, log_format, with_pid=with_pid)


def _settings(config_file: Path | None, **flags: object) -> Settings:
    from pydantic import ValidationError

    from cthm.settings import load_settings

    try:
        return load_settings(config_file, **flags)
    except ValidationError as exc:
        raise SettingsFailure(f"invalid settings: {describe_validation_error(exc)}") from None
    except OSError as exc:
        name = exc.filename or config_file
        reason = exc.strerror or exc
        raise SettingsFailure(f"cannot read config file {name}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsFailure(f"config file is not valid TOML: {exc}") from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        # A check of several settings at once names them in its message.
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)
