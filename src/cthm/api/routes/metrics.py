"""GET /metrics (Prometheus text, admin token) and GET /readyz (readiness, no token).

/metrics is cthm.metrics' exposition: this process's counters and histograms, then what is
read at the scrape: routers and bindings by status (one grouped query each) and the in-process
agent's queue depth. `--metrics-listen HOST:PORT` serves the same text without a token on an
address of its own (MetricsListener: loopback unless another address is given), for a
Prometheus that holds no cthm token; everything else stays behind the API's.

/readyz, beside /healthz (liveness: the process answers and the database can be read), says
whether this server should be sent work, as kube-proxy's healthz does: 503 when
- database: a write transaction cannot begin now (SQLite's write lock not had within
  READY_WRITE_TIMEOUT seconds, a read-only file; PostgreSQL read-only or a standby, or away);
- agent: the in-process agent's threads are not all running (not checked without one);
- queue: a router queued for the in-process agent has waited more than
  settings.ready_queue_timeout seconds for its sync (a retried failure keeps waiting).
The JSON body names every check: {"status": "ready"|"not ready", "checks": {name: {"ok":
bool, "detail": str}}}; a check that does not apply is ok with a detail saying so.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from cthm import metrics
from cthm.api import policy
from cthm.api.deps import PrincipalDep, StoreDep
from cthm.domain import AgentReport, AgentsProvider, CthmError
from cthm.settings import Settings, parse_listen
from cthm.store import Store

log = logging.getLogger(__name__)

# Seconds the write probe waits for SQLite's write lock (a write holding it longer: not ready).
READY_WRITE_TIMEOUT = 2.0

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text"}},
)
def get_metrics(request: Request, principal: PrincipalDep, store: StoreDep) -> Response:
    """This server's metrics in Prometheus' text format (admin only)."""
    policy.enforce(principal, "get_metrics", None, target_type="metrics")
    return Response(scrape(store, _provider(request)), media_type=metrics.CONTENT_TYPE)


def scrape(store: Store, agents: AgentsProvider | None) -> bytes:
    """The exposition text; the database gauges are left out (said in the log) when the
    database cannot answer, so the rest is still scraped."""
    census: metrics.Census | None = None
    try:
        with store.unit_of_work(write=False) as repo:
            census = metrics.Census(*repo.census())
    except CthmError as exc:
        log.warning("metrics without routers and bindings: %s", exc.message)
    reports = _reports(agents)
    depth = sum(r.snapshot.queue_depth for r in reports) if reports else None
    return metrics.exposition(census, depth)


@router.get("/readyz")
async def readyz(request: Request, store: StoreDep) -> JSONResponse:
    """200 when this server can take work, else 503; the body names each check."""
    settings: Settings = request.app.state.cthm.settings
    checks = {"database": await _database_check(store)}
    checks.update(agent_checks(_reports(_provider(request)), settings.ready_queue_timeout))
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def _database_check(store: Store) -> dict[str, Any]:
    try:
        # The probe's thread is left to finish on its own if it overruns: the answer is not
        # held up by a database that does not answer at all.
        with anyio.fail_after(READY_WRITE_TIMEOUT + 3.0):
            await anyio.to_thread.run_sync(
                store.check_writable, READY_WRITE_TIMEOUT, abandon_on_cancel=True
            )
    except CthmError as exc:
        return {"ok": False, "detail": f"cannot take writes: {exc.message}"}
    except TimeoutError:
        return {"ok": False, "detail": "cannot take writes: the database did not answer"}
    return {"ok": True, "detail": "takes writes"}


def agent_checks(reports: Sequence[AgentReport], queue_timeout: float) -> dict[str, Any]:
    if not reports:
        na = {"ok": True, "detail": "no agent in this process"}
        return {"agent": na, "queue": dict(na)}
    stopped = [r.host for r in reports if not r.snapshot.threads_alive]
    agent = (
        {"ok": False, "detail": "the agent's threads are not running"}
        if stopped
        else {"ok": True, "detail": "running"}
    )
    waits = [r.snapshot.oldest_queued_seconds for r in reports]
    oldest = max((w for w in waits if w is not None), default=None)
    if oldest is None:
        queue = {"ok": True, "detail": "nothing waits"}
    elif oldest > queue_timeout:
        queue = {
            "ok": False,
            "detail": f"a router has waited {oldest:.0f} s for its sync "
            f"(more than {queue_timeout:g} s)",
        }
    else:
        queue = {"ok": True, "detail": f"the oldest queued router has waited {oldest:.1f} s"}
    return {"agent": agent, "queue": queue}


def _provider(request: Request) -> AgentsProvider | None:
    provider: AgentsProvider | None = getattr(request.app.state, "agents", None)
    return provider


def _reports(agents: AgentsProvider | None) -> list[AgentReport]:
    return list(agents()) if agents is not None else []


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class MetricsListener:
    """GET /metrics without a token on an address of its own (`--metrics-listen`), in a thread;
    any other path is 404. Started and stopped with the application (its lifespan)."""

    def __init__(self, address: str, produce: Callable[[], bytes]) -> None:
        host, port = parse_listen(address)
        self._produce = produce
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = outer._produce()
                except Exception:  # a scrape must never take the listener down
                    log.exception("metrics scrape failed")
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("Content-Type", metrics.CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics listener: " + format, *args)

        server_class = _V6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), Handler)
        self._server.daemon_threads = True
        if not ipaddress.ip_address(host).is_loopback:
            log.warning(
                "metrics are served without a token on %s, beyond loopback: anyone who can reach "
                "it reads router and binding counts",
                address,
            )
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cthm-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()


def start_listener(app: Any) -> MetricsListener | None:
    """The application's --metrics-listen listener, started; None when the setting is unset."""
    context = app.state.cthm
    address = context.settings.metrics_listen
    if address is None:
        return None
    store, agents = context.store, getattr(app.state, "agents", None)
    try:
        listener = MetricsListener(address, lambda: scrape(store, agents))
    except OSError as exc:
        log.error("cannot listen for metrics on %s: %s", address, exc.strerror or exc)
        raise
    listener.start()
    log.info("metrics on http://%s/metrics (no token)", address)
    return listener
