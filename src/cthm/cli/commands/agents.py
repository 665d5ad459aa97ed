"""`cthm agent list|show|delete`: the agents serving the API (the server's own, and the node
agents), their backends and why, and how they are doing (GET /v2.0/agents; admin tokens only).

`cthm agent run`: a node agent, on each network node of a deployment whose API runs with
`cthm serve --no-agent`. It has no database: it registers its host and the router namespaces
found there, watches the API's change feed and programs the routers placed on its host.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cthm.cli import render
from cthm.cli.client import JSONObject
from cthm.cli.context import (
    CliState,
    clean_token,
    is_loopback_url,
    json_option,
    pass_state,
    validate_url,
)
from cthm.cli.errors import ServiceError, SettingsFailure

if TYPE_CHECKING:
    from cthm.agent import KernelBackend
    from cthm.agent.node import NodeAgent
    from cthm.api.routes.metrics import MetricsListener
    from cthm.cli.backends import BackendSettings
    from cthm.netfilter import NftRunner, RawTable

log = logging.getLogger(__name__)

# How long `stop` may take (the agent finishes its in-flight work) before the process exits.
STOP_TIMEOUT = 20.0
# The main thread wakes this often while it waits for a signal (wait() is not always woken by one).
SIGNAL_POLL = 0.5
TOKEN_HINT = "an agent token is needed: cthm token create --role agent --host NAME"  # noqa: S105

AGENT_COLUMNS = (
    ("id", "ID"),
    ("host", "Host"),
    ("alive", "Alive"),
    ("backend", "Backend"),
    ("chosen_by", "Chosen by"),
    ("routers", "Routers"),
    ("queue_depth", "Queue"),
    ("heartbeat_timestamp", "Heartbeat"),
)


@click.group("agent")
def agent_group() -> None:
    """Show the agents that program the kernels (admin tokens), or run one on this node."""


@agent_group.command("list")
@click.option("--host", default=None, help="Only agents of this host.")
@json_option
@pass_state
def list_(state: CliState, host: str | None) -> None:
    """List the agents: id, host, alive, backend and how it was chosen."""
    with state.client() as client:
        agents = client.list_agents(host=host)
    render.emit(
        state, {"agents": agents}, render.print_rows, [_row(a) for a in agents], AGENT_COLUMNS
    )


@agent_group.command("show")
@click.argument("agent_id")
@json_option
@pass_state
def show(state: CliState, agent_id: str) -> None:
    """Show the agent with id AGENT_ID, its backend choice and its counts."""
    with state.client() as client:
        agent = client.get_agent(agent_id)
    render.emit(state, {"agent": agent}, render.print_object, flatten(agent))


@agent_group.command("delete")
@click.argument("agent_id")
@click.option("--force", is_flag=True, help="Forget the agent even while it is alive.")
@json_option
@pass_state
def delete(state: CliState, agent_id: str, force: bool) -> None:
    """Forget the node agent AGENT_ID and what its host reported (its per-host rows).

    Meant for a node gone for good: a dead agent (alive no). A live one is refused unless
    --force, and would register again at its next report anyway."""
    with state.client() as client:
        client.delete_agent(agent_id, force=force)
    render.emit(state, None, render.print_line, f"Deleted agent {agent_id}")


@agent_group.command("run")
@click.option(
    "--url",
    "api_url",
    default=None,
    callback=lambda ctx, param, value: value if value is None else validate_url(ctx, param, value),
    help="Base URL of the cthm API. [the global --url; env CTHM_URL]",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the agent token. [env CTHM_TOKEN]",
)
@click.option(
    "--host",
    "host_name",
    default=None,
    help="This node's name, as the API shows it. [the machine's host name]",
)
@click.option(
    "--backend",
    type=click.Choice(["nftables", "iptables", "auto"]),
    default="nftables",
    show_default=True,
    help="How rules reach the kernel; auto: what the node's routers use, decided at start.",
)
@click.option(
    "--iptables-flavour",
    type=click.Choice(["default", "nft", "legacy"]),
    default="default",
    show_default=True,
    help="iptables tools: the system's, iptables-nft or iptables-legacy.",
)
@click.option(
    "--nft-backend",
    type=click.Choice(["auto", "libnftables", "subprocess"]),
    default="auto",
    show_default=True,
    help="How nftables is driven: the library, or the nft command.",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PEM CA certificates to check an https API's certificate with. [the system's]",
)
@click.option(
    "--report-interval",
    type=click.FloatRange(min=0.1, max=3600),
    default=30.0,
    show_default=True,
    help="Seconds between reports (heartbeats) to the API.",
)
@click.option(
    "--resync-interval",
    type=click.FloatRange(min=0.1, max=86400),
    default=60.0,
    show_default=True,
    help="Seconds between full resyncs of every router placed here.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    help="Routers reconciled at once.",
)
@click.option(
    "--kernel-processes",
    type=click.IntRange(min=0, max=16),
    default=None,
    help="Worker processes sharing bursts of full syncs (nftables with libnftables); 0: "
    "none. [one per CPU, at most 4; none on one CPU]",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="cthm's log level.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default="text",
    show_default=True,
    help="Log lines as text or as one JSON object each; times in UTC.",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    callback=lambda ctx, param, value: _listen_address(value),
    help="Serve this agent's GET /metrics (Prometheus, no token) on this address (a port "
    "alone: 127.0.0.1, loopback; another address only when written out). [off]",
)
@pass_state
def run(
    state: CliState,
    api_url: str | None,
    token_file: Path | None,
    host_name: str | None,
    backend: str,
    iptables_flavour: str,
    nft_backend: str,
    ca_file: Path | None,
    report_interval: float,
    resync_interval: float,
    workers: int,
    kernel_processes: int | None,
    log_level: str,
    log_format: str,
    metrics_listen: str | None,
) -> None:
    """Run a node agent until SIGTERM or Ctrl-C (exit 0).

    It programs the routers whose namespaces are on this host, as the API (cthm serve
    --no-agent) says they should be. When the API cannot be reached the kernel is left as it
    is and the agent retries. Exit 2 when it cannot start (a refused token, a backend that
    cannot be used here)."""
    from cthm.cli.backends import BackendSettings
    from cthm.cli.commands.serve import configure_logging

    url = state.url if api_url is None else api_url
    token = _read_token(token_file, state.token)
    host = _host(host_name)
    configure_logging(log_level.upper(), log_format=log_format.lower())
    if not is_loopback_url(url) and url.startswith("http://"):
        log.warning("the API at %s is plain http: the token crosses the network in clear", url)
    settings = BackendSettings(backend, iptables_flavour, nft_backend, kernel_processes)
    _run_node_agent(
        url,
        token,
        host,
        settings,
        ca_file=ca_file,
        report_interval=report_interval,
        resync_interval=resync_interval,
        workers=workers,
        metrics_listen=metrics_listen,
    )


def _listen_address(value: str | None) -> str | None:
    from cthm.settings import parse_listen

    if value is not None:
        try:
            parse_listen(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _read_token(token_file: Path | None, given: str | None) -> str:
    """The token from --token-file, else the one given (--token or CTHM_TOKEN). Never the local
    admin token file: a node agent acts with its own agent token."""
    if token_file is None:
        if given is None:
            raise SettingsFailure(
                f"no token: give --token-file FILE or set CTHM_TOKEN ({TOKEN_HINT})"
            )
        return given
    try:
        text = token_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SettingsFailure(f"cannot read token file {token_file}: {reason}") from None
    token = clean_token(text)
    if token is None:  # said without showing the content: it may be a secret
        raise SettingsFailure(f"token file {token_file} does not hold a token")
    return token


def _host(host_name: str | None) -> str:
    from cthm.domain import InvalidInput, validate_host

    name = socket.gethostname() if host_name is None else host_name
    try:
        return validate_host(name)
    except InvalidInput as exc:
        hint = "--host" if host_name is not None else "this machine's host name (give --host)"
        raise SettingsFailure(f"invalid {hint}: {exc.message}") from None


class _NodeBackends:
    """make_backend for NodeAgent, called once the API named the deployment: the same choice
    `cthm serve` makes, looking at the namespaces discovered on this host, everything marked
    with the API's deployment identity. Keeps what the agent reads later: the nftables runner
    its backend holds open (raw tables: netfilter.read_raw_tables) and the label chosen."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.nft: NftRunner | None = None
        self.label: str | None = None

    def make(
        self, deployment_id: str, namespaces: list[str]
    ) -> tuple[KernelBackend, tuple[KernelBackend, ...], dict[str, Any]]:
        from cthm.cli.backends import check_identity, choice_info, prepare_backends

        prepared = prepare_backends(
            self.settings,
            lambda: iter(namespaces),
            lambda: check_identity(deployment_id, whose="the API's"),
        )
        self.nft, self.label = prepared.nft, prepared.choice.label
        log.info("%s", prepared.choice.describe())
        return prepared.backend, prepared.retired, choice_info(prepared.choice)

    def raw_tables(self, namespace: str) -> Sequence[RawTable]:
        from cthm.netfilter import read_raw_tables

        return read_raw_tables(namespace, nft=self.nft)


def _run_node_agent(
    url: str,
    token: str,
    host: str,
    settings: BackendSettings,
    *,
    ca_file: Path | None,
    report_interval: float,
    resync_interval: float,
    workers: int,
    metrics_listen: str | None = None,
) -> None:
    # Imported here: the agent stack is not needed by the client commands.
    from cthm.agent.node import NodeAgent
    from cthm.agent.remote import ApiClient, ApiRefused
    from cthm.domain import HelperCatalog

    try:
        client = ApiClient(url, token, ca_file=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: not PEM, unreadable
        raise SettingsFailure(f"cannot use --ca-file {ca_file}: {exc}") from None
    stop = threading.Event()
    with _stopped_by_signals(stop):
        backends = _NodeBackends(settings)
        node = NodeAgent(
            client,
            host,
            backends.make,
            # The API checked every binding against its allow-list: the agent knows them all.
            HelperCatalog(),
            report_interval=report_interval,
            resync_interval=resync_interval,
            workers=workers,
            raw_tables=backends.raw_tables,
            stop_event=stop,
        )
        listener = _metrics_listener(metrics_listen, node)
        try:
            log.info("node agent of host %s starting; API %s", host, url)
            if node.start():  # False: stopped before the API answered
                click.echo(
                    f"cthm agent of host {host} registered with {url} (backend {backends.label})"
                )
            while not stop.wait(SIGNAL_POLL):
                pass
            log.info("node agent of host %s stopping", host)
        except ApiRefused as exc:
            if exc.status in (401, 403):
                raise SettingsFailure(
                    f"the API refused the token: {exc.message} ({TOKEN_HINT})"
                ) from None
            raise SettingsFailure(f"the API refused the agent: {exc.message}") from None
        except ServiceError as exc:  # the backend cannot be used here
            raise SettingsFailure(exc.message) from None
        finally:
            # Closes the backends and the client too.
            if not node.stop(STOP_TIMEOUT):
                log.warning("some agent threads did not end within %gs", STOP_TIMEOUT)
            if listener is not None:
                listener.stop()


def _metrics_listener(address: str | None, node: NodeAgent) -> MetricsListener | None:
    """The agent's own metrics on `address`, started (None: not asked for): its syncs,
    failures, drift repairs, queue depth and the helper usage it last read (no database
    figures: a node agent has none). Exit 2 when the address cannot be bound."""
    if address is None:
        return None
    from cthm import metrics
    from cthm.api.routes.metrics import MetricsListener

    def produce() -> bytes:
        snapshot = node.snapshot()
        return metrics.exposition(None, snapshot.queue_depth if snapshot is not None else None)

    try:
        listener = MetricsListener(address, produce)
    except OSError as exc:
        raise SettingsFailure(
            f"cannot listen for metrics on {address}: {exc.strerror or exc}"
        ) from None
    listener.start()
    log.info("metrics on http://%s/metrics (no token)", address)
    return listener


@contextlib.contextmanager
def _stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` instead of raising; the old handlers come back after."""

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    old = [signal.signal(sig, handler) for sig in signals]
    try:
        yield
    finally:
        for sig, previous in zip(signals, old, strict=True):
            signal.signal(sig, previous)


def _row(agent: JSONObject) -> JSONObject:
    config = _configurations(agent)
    return {
        **agent,
        "alive": _yes_no(agent.get("alive")),
        **{key: config.get(key) for key in ("backend", "chosen_by", "routers", "queue_depth")},
    }


def flatten(agent: JSONObject) -> JSONObject:
    """The agent's fields, its configurations after them one per row (counts on one line)."""
    config = _configurations(agent)
    rows: JSONObject = {k: v for k, v in agent.items() if k != "configurations"}
    rows["alive"] = _yes_no(rows.get("alive"))
    for key, value in config.items():
        if key == "counts" and isinstance(value, dict):
            value = ", ".join(f"{name} {count}" for name, count in value.items())
        elif key == "retired_backends" and isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "none"
        elif key == "unclaimed_kernel_state" and isinstance(value, dict):
            value = ", ".join(f"{ns} ({owner})" for ns, owner in value.items()) or "none"
        rows[key] = value
    return rows


def _configurations(agent: JSONObject) -> dict[str, Any]:
    config = agent.get("configurations")
    return config if isinstance(config, dict) else {}


def _yes_no(value: Any) -> Any:
    return ("yes" if value else "no") if isinstance(value, bool) else value
