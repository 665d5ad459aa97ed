"""The application factory: routes, the request-id and body-size middleware, error handlers.

Error handling has three layers: handlers for what FastAPI and the domain raise (each becomes a
Neutron error body with its own status), and, around everything, a middleware that turns any
exception that still escapes into a generic 500 body (logged with its traceback, never sent).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cthm import metrics
from cthm.api import audit, policy
from cthm.api.access_log import log_answer
from cthm.api.auth import CHALLENGE, AuthenticationMiddleware, Authenticator, openapi_security
from cthm.api.auth_audit import FailedAuthentications
from cthm.api.deps import ApiContext, HelperAvailability, before_route
from cthm.api.errors import (
    INTERNAL_ERROR_MESSAGE,
    Denial,
    RequestTooLarge,
    Unauthenticated,
    body_parse_message,
    domain_error_response,
    error_response,
    http_kind,
    validation_message,
)
from cthm.api.request_metrics import count_answer, route_template
from cthm.api.routes import agents as agents_routes
from cthm.api.routes import (
    audit_events,
    auth_tokens,
    catalog,
    conntrack_helpers,
    health,
    routers,
    ui,
    versions,
)
from cthm.api.routes import hosts as hosts_routes
from cthm.api.routes import kernel_state as kernel_state_routes
from cthm.api.routes import metrics as metrics_routes
from cthm.api.routes import resync as resync_routes
from cthm.api.routes import status as router_status
from cthm.api.routes import watch as watch_routes
from cthm.api.schemas import ErrorResponse
from cthm.domain import (
    AgentsProvider,
    CthmError,
    HelperCatalog,
    HelperUsageProvider,
    KernelStateProvider,
    NamespaceCheck,
    ResyncRequester,
)
from cthm.settings import Settings
from cthm.store import AuditContext, Store

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Openstack-Request-Id"
REQUEST_ID_HEADER_RAW = REQUEST_ID_HEADER.lower().encode("latin-1")
# Requests that change something: an audited change failing in one is recorded as `failed`.
CHANGE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Every body this API takes is a few hundred bytes; refuse more long before parsing it.
MAX_BODY_BYTES = 64 * 1024
# But a node agent's report lists every namespace and kernel summary of its host, and a
# router's status report every binding (10,000 of each at most): these paths take more.
AGENT_BODY_PREFIX = "/v2.0/hosts/"
AGENT_MAX_BODY_BYTES = 16 * 1024 * 1024
# How often node agents' liveness is looked at (at most; a third of agent_down_time if less).
LIVENESS_INTERVAL = 10.0

_HTTP_MESSAGES = {
    404: "The resource could not be found.",
    405: "The method is not allowed for this resource.",
}


def create_app(
    settings: Settings,
    store: Store,
    *,
    helper_availability: HelperAvailability | None = None,
    authenticator: Authenticator | None = None,
    kernel_state: KernelStateProvider | None = None,
    helper_usage: HelperUsageProvider | None = None,
    agents: AgentsProvider | None = None,
    namespace_check: NamespaceCheck | None = None,
    local_agent_host: str | None = None,
    resync: ResyncRequester | None = None,
) -> FastAPI:
    """The cthm REST API over `store`. helper_availability: which (kernel helper, protocol)
    pairs this host's kernel has; None: unknown (the catalog shows kernel_available null).
    authenticator: how tokens are checked and failures slowed down (default: the defaults).
    kernel_state: the in-process agent's view of a router's kernel table; None: no agent.
    helper_usage: the in-process agent's live read of a namespace's helper usage (conntrack
    entries and expectations, in kernel_state); None: no agent, usage not shown.
    agents: reports on the agents serving this API (GET /v2.0/agents); None: no agent.
    namespace_check: refuses at registration a namespace the agent of this host would refuse
    (given only where that agent runs); None: the namespace is checked by the agent alone.
    local_agent_host: the host of the in-process agent (embedded mode: it manages every
    router, and node agents' reports are refused); None: no in-process agent, routers are
    placed on the hosts whose node agents report their namespaces.
    resync: asks the in-process agent for a full reconcile of a router; None: no agent (node
    agents hear of a resync through the change feed)."""
    app = FastAPI(
        title="cthm",
        summary="Conntrack helper manager: Neutron-compatible conntrack helper API",
        version="2.0",
        # The OpenAPI document needs a token like everything else; no pages that cannot send one.
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
        dependencies=[Depends(before_route)],
        responses={
            400: {"model": ErrorResponse, "description": "invalid request"},
            401: {"model": ErrorResponse, "description": "authentication required"},
            404: {"model": ErrorResponse, "description": "not found"},
            409: {"model": ErrorResponse, "description": "conflicts with stored state"},
            412: {"model": ErrorResponse, "description": "If-Match revision is stale"},
            413: {"model": ErrorResponse, "description": "request body too large"},
            503: {"model": ErrorResponse, "description": "database unavailable"},
        },
    )
    app.state.cthm = ApiContext(
        settings=settings,
        store=store,
        catalog=settings.catalog(),
        helper_availability=helper_availability,
    )
    app.state.authenticator = authenticator if authenticator is not None else Authenticator()
    app.state.kernel_state = kernel_state
    app.state.helper_usage = helper_usage
    app.state.agents = agents
    app.state.namespace_check = namespace_check
    app.state.local_agent_host = local_agent_host
    app.state.resync = resync
    app.state.watch_hub = watch_routes.WatchHub()
    # Called in the committing thread; it only schedules wake-ups on the waiting watches' loops.
    store.subscribe(app.state.watch_hub.notify, router_ids=False)
    app.state.failed_authentications = FailedAuthentications(store)
    # Added before the request-context middleware, so it runs inside it: a 401 has a request id.
    app.add_middleware(AuthenticationMiddleware, authenticator=app.state.authenticator, store=store)
    # Outermost of cthm's: every answer, a 401 before routing included, is counted and logged.
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=MAX_BODY_BYTES,
        extra_headers=security_headers(tls=settings.tls_enabled),
        agent_body_bytes=AGENT_MAX_BODY_BYTES,
    )
    app.add_exception_handler(CthmError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    # First the bindings' routes, the API's hot path: routing tries the included routers in
    # order (a router tried costs a match of each route of it), and no other path is theirs.
    app.include_router(conntrack_helpers.router)
    # Before the routers' routes: GET /v2.0/routers/{router_id} would take it.
    app.include_router(kernel_state_routes.bulk)
    for module in (
        versions,
        routers,
        router_status,
        kernel_state_routes,
        resync_routes,
        catalog,
        health,
        audit_events,
        auth_tokens,
        agents_routes,
        hosts_routes,
        watch_routes,
        metrics_routes,
    ):
        app.include_router(module.router)
    app.mount(ui.PATH, ui.application(app))
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def begin_shutdown(app: FastAPI) -> None:
    """For the server, as it starts to stop (before it waits for open requests): every waiting
    long poll (GET /v2.0/watch) answers now, and later ones do not wait, so watching agents
    neither hold the shutdown up nor get cut off without an answer. The lifespan's shutdown
    comes too late for this: a server runs it once every request has finished."""
    app.state.watch_hub.close()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While serving, counts of failed authentications reach the database every few seconds;
    the last ones as the server stops. Without an in-process agent, node agents that stopped
    reporting are marked dead (and their routers' statuses say so) within agent_down_time."""
    failures: FailedAuthentications = app.state.failed_authentications
    context: ApiContext = app.state.cthm
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_flush_periodically, failures)
        if app.state.local_agent_host is None:
            tasks.start_soon(_refresh_liveness_periodically, context)
        listener = metrics_routes.start_listener(app)  # --metrics-listen; None: not asked for
        try:
            yield
        finally:
            tasks.cancel_scope.cancel()
            if listener is not None:
                listener.stop()
    await anyio.to_thread.run_sync(failures.flush)


async def _flush_periodically(failures: FailedAuthentications) -> None:
    while True:
        await anyio.sleep(failures.flush_interval)
        if failures.pending():
            await anyio.to_thread.run_sync(failures.flush)


async def _refresh_liveness_periodically(context: ApiContext) -> None:
    down_time = context.settings.agent_down_time
    interval = min(LIVENESS_INTERVAL, down_time / 3)
    while True:
        await anyio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(refresh_liveness, context.store, down_time)
        except CthmError as exc:  # the database is away: next time, the server keeps serving
            log.warning("cannot look at node agents' liveness: %s", exc.message)


def refresh_liveness(store: Store, down_time: float) -> list[str]:
    """Marks node agents alive or dead by their last report; the routers whose status it
    recomputed. Looks first in a read transaction: most of the time nothing changed, and a
    write transaction would take SQLite's write lock from the requests for nothing."""
    with store.unit_of_work(write=False) as repo:
        if not repo.hosts.liveness_flips(datetime.now(UTC), down_time):
            return []
    with store.unit_of_work(write=True) as repo:
        return repo.hosts.refresh_liveness(datetime.now(UTC), down_time)


def body_limit(path: str) -> int:
    return AGENT_MAX_BODY_BYTES if path.startswith(AGENT_BODY_PREFIX) else MAX_BODY_BYTES


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, without its 422 responses: request errors here are 400s."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        for path in document.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _declare_catalog(schemas, app.state.cthm.catalog)
        openapi_security(document)
        app.openapi_schema = document
    return app.openapi_schema


def _declare_catalog(schemas: dict[str, Any], catalog: HelperCatalog) -> None:
    """Request bodies name the helpers this deployment's catalog accepts, so clients (and the
    fuzzer) see them; which helper goes with which protocol stays a 400 with its reason."""
    helpers = sorted({entry.helper for entry in catalog.entries()})
    for name in ("ConntrackHelperCreate", "ConntrackHelperUpdate"):
        helper = schemas.get(name, {}).get("properties", {}).get("helper")
        if helper is None:
            continue
        variants = helper.get("anyOf")
        target = (
            next((v for v in variants if v.get("type") == "string"), None) if variants else helper
        )
        if target is not None:
            target["enum"] = helpers


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CthmError)
    response = domain_error_response(exc)
    if response.status_code == 500:
        log.error("unexpected domain error %r", exc, exc_info=exc)
    if isinstance(exc, Denial):
        # Queued once the answer is sent (never waiting for the database), so the answer to a
        # denied attempt costs what the same answer to an unknown id costs.
        response.background = BackgroundTask(
            _record_denial_after, request, exc, response.status_code
        )
    elif (
        request.method in CHANGE_METHODS
        and response.status_code != 404  # nothing there to change: not a failed change
        and not isinstance(exc, Unauthenticated)
    ):
        allowed: list[policy.Allowed] = (request.scope.get("state") or {}).get("allowed") or []
        if allowed:  # an audited change was allowed, then failed: its event rolled back
            response.background = BackgroundTask(
                _record_failure_after, request, allowed[-1], exc, response.status_code
            )
    if isinstance(exc, Unauthenticated):
        await _count_failed_authentication(request, exc)
        response.headers.update(CHALLENGE)
    return response


async def _count_failed_authentication(request: Request, exc: Unauthenticated) -> None:
    """One audit event per client per window, with a count (see auth_audit); a write, when
    one is due, happens before the 401 is sent."""
    failures: FailedAuthentications = request.app.state.failed_authentications
    metrics.AUTH_FAILURES.inc()
    state = request.scope.get("state") or {}
    context = audit.context_of(state)
    context = AuditContext(context.request_id, exc.token_id, None)
    due = failures.failed(exc.client or "unknown", context, f"{request.method} {request.url.path}")
    if due:
        await run_in_threadpool(failures.write, due)


async def _record_failure_after(
    request: Request, allowed: policy.Allowed, exc: CthmError, status_code: int
) -> None:
    store: Store = request.app.state.cthm.store
    state = request.scope.get("state") or {}
    detail = f"{request.method} {request.url.path}: {exc.message}"
    audit.record_failure(store, state, allowed, status_code, detail)  # it only queues


async def _record_denial_after(request: Request, exc: Denial, status_code: int) -> None:
    _record_denial(request, exc, status_code)  # async: no thread hop, it only queues


def _record_denial(request: Request, exc: Denial, status_code: int) -> None:
    """Every denied attempt goes to the audit trail (in a transaction of its own)."""
    store: Store = request.app.state.cthm.store
    state = request.scope.get("state") or {}  # request id, principal (set by the middlewares)
    detail = f"{request.method} {request.url.path}"
    audit.record_denial(store, state, exc, status_code, detail)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, http_kind(400), validation_message(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 400 and exc.__cause__ is not None:  # FastAPI could not decode the body
        message = body_parse_message(exc.__cause__)
    elif status == 413:
        message = RequestTooLarge(body_limit(request.url.path)).message
    else:
        message = _HTTP_MESSAGES.get(status) or (
            exc.detail if isinstance(exc.detail, str) else f"HTTP error {status}"
        )
    return error_response(status, http_kind(status), message, headers=exc.headers)


def security_headers(*, tls: bool) -> tuple[tuple[str, str], ...]:
    """Headers on every response. The API serves JSON only: nothing may be sniffed, framed,
    cached or referred; HSTS once the server speaks TLS."""
    headers: tuple[tuple[str, str], ...] = (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
    )
    if tls:
        headers += (("Strict-Transport-Security", "max-age=31536000"),)
    return headers


class RequestContextMiddleware:
    """Gives every response an X-Openstack-Request-Id and the security headers, bounds request
    bodies, turns an exception nothing else handled into a generic 500 body (never a
    traceback), and counts (request_metrics) and logs (access_log) every answer: 500 for an
    exception nothing answered. One layer for what were three (a layer costs its call and a
    wrapper of each message sent: ~1.5% of a create's CPU)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        extra_headers: tuple[tuple[str, str], ...] = (),
        agent_body_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.extra_headers = extra_headers
        # Node agents' paths (AGENT_BODY_PREFIX) take up to this much; None: as any other.
        self.agent_body_bytes = agent_body_bytes
        # The headers as ASGI sends them (lower-case bytes), for the usual answer that sets none
        # of them itself: appended as they are instead of set one by one.
        self._raw_extra = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in extra_headers
        ]
        self._extra_names = frozenset(name for name, _ in self._raw_extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = f"req-{uuid.uuid4()}"
        scope.setdefault("state", {})["request_id"] = request_id
        # The audited changes the policy allows in this request (a failure after: `failed`).
        scope["state"]["allowed"] = policy.track_allowed()
        started = False
        status = 500  # an exception nothing answered

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                self._add_headers(message, request_id)
            await send(message)

        try:
            await self._bounded(scope, receive, send_with_id, request_id, lambda: started)
        finally:
            seconds = time.perf_counter() - began
            route = route_template(scope)
            count_answer(scope, route, status, seconds)
            log_answer(scope, route, status, seconds, request_id if started else "-")

    def _add_headers(self, message: Message, request_id: str) -> None:
        raw = message.setdefault("headers", [])
        if not any(name.lower() in self._extra_names for name, _ in raw):
            message["headers"] = [
                *raw,
                (REQUEST_ID_HEADER_RAW, request_id.encode("latin-1")),
                *self._raw_extra,
            ]
            return
        headers = MutableHeaders(scope=message)
        headers.append(REQUEST_ID_HEADER, request_id)
        for name, value in self.extra_headers:
            # The status page (/ui) sets its own policy: a stylesheet and its forms.
            if name == "Content-Security-Policy" and name in headers:
                continue
            headers[name] = value

    async def _bounded(
        self,
        scope: Scope,
        receive: Receive,
        send_with_id: Send,
        request_id: str,
        started: Callable[[], bool],
    ) -> None:
        """The application with the request's body bounded; an exception it raises before
        anything was answered becomes the generic 500."""
        limit = self.max_body_bytes
        if self.agent_body_bytes is not None and str(scope.get("path", "")).startswith(
            AGENT_BODY_PREFIX
        ):
            limit = self.agent_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            too_large = RequestTooLarge(limit)
            await domain_error_response(too_large)(scope, receive, send_with_id)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413)
            return message

        try:
            await self.app(scope, bounded_receive, send_with_id)
        except Exception:
            log.exception(
                "request %s %s failed (%s)", scope.get("method"), scope.get("path"), request_id
            )
            if started():
                raise
            response = error_response(500, http_kind(500), INTERNAL_ERROR_MESSAGE)
            await response(scope, receive, send_with_id)


def _content_length(scope: Scope) -> int | None:
    headers: Any = scope.get("headers") or ()
    for key, value in headers:
        if key.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 19 else None
    return None
