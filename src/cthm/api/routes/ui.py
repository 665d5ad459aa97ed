"""/ui: a read-only status page for operators, rendered on the server, refreshing by itself.

Every router (status, hosts, bindings, errors) and every agent (alive, backend, queue, drift
repairs, failures) on one page. No JavaScript at all: the page reloads itself with a
`<meta http-equiv="refresh">` (`?refresh=N` seconds, default 5), and its one inline stylesheet
is allowed by its hash in the page's own Content-Security-Policy (no 'unsafe-inline').

Login: a form posts an API token; it is checked exactly as the API checks one (the same
Authenticator: its throttle, expiry and revocation; failures counted in the audit trail) and
kept in a cookie (HttpOnly, SameSite=Strict, Path=/ui, Secure when the request came over TLS)
that every later page view checks again, so a revoked token ends its session at the next
refresh. The token rather than a server-side session id: sessions then need no state of their
own, and survive a restart and `--workers N` (one process's sessions would be unknown to the
others). What a token sees is the API's policy: routers of every project for admin and agent
tokens, of its own project for the others (`policy.list_scope`); agents only where
`get_agent` allows it.

This is a Starlette application mounted at /ui, not API routes: its form posts are not JSON
(which every API route requires), it is no part of the OpenAPI document, and the API's
authentication middleware leaves /ui to it (`cthm.api.auth.is_exempt`). Every value shown is
HTML-escaped (`_e`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cthm.api import policy
from cthm.api.auth import TOKEN_HEADER, Authenticator, AuthFailure, client_key
from cthm.api.auth_audit import FailedAuthentications
from cthm.api.deps import ApiContext
from cthm.api.principal import Principal
from cthm.api.routes.agents import agent_body, node_agent_body
from cthm.api.schemas import format_timestamp
from cthm.domain import AgentsProvider, CthmError, HelperBinding, ListQuery, Router, SortDir
from cthm.store import AuditContext, Store

log = logging.getLogger(__name__)

PATH = "/ui"
COOKIE = "cthm_ui_token"
DEFAULT_REFRESH = 5
MIN_REFRESH = 1
MAX_REFRESH = 3600
# A page, not a listing: past this many routers `cthm status` is the tool.
MAX_ROUTERS = 1000
MAX_TOKEN_CHARS = 256
FORM_TYPE = "application/x-www-form-urlencoded"
# ERROR first: the rows an operator opened the page for.
STATUS_ORDER = {"ERROR": 0, "PENDING": 1, "ACTIVE": 2}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d1d1f; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem 0; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem 0; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd;
  vertical-align: top; }
th { background: #f3f3f3; }
.status-ACTIVE { color: #116611; font-weight: bold; }
.status-PENDING { color: #8a6d00; font-weight: bold; }
.status-ERROR, .dead, .error { color: #b00020; font-weight: bold; }
.muted { color: #666; font-size: .85rem; }
header { display: flex; justify-content: space-between; align-items: baseline; }
form.login { max-width: 32rem; }
form.login input[type=password] { width: 100%; padding: .4rem; margin: .5rem 0; }
ul.errors { margin: 0; padding-left: 1rem; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# The API's policy is default-src 'none'; the page needs its own stylesheet and its forms.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


def application(api: FastAPI) -> Starlette:
    """The page, for `api.mount(PATH, ...)`: it reads the store, authenticator and agents
    `create_app` put on `api`."""
    app = Starlette(
        routes=[
            Route("/", _page, methods=["GET"]),
            Route("/login", _login, methods=["POST"]),
            Route("/logout", _logout, methods=["POST"]),
        ]
    )
    app.state.api = api
    return app


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --- the three endpoints -----------------------------------------------------------------------


async def _page(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if not token:
        return _login_page(request)
    try:
        principal = await _authenticate(request, token)
    except AuthFailure:
        response = _login_page(request, "Your session has ended: log in again.", 401)
        _forget(response)
        return response
    except CthmError as exc:
        return _unavailable(exc)
    refresh = _refresh(request)
    try:
        view = await run_in_threadpool(_read, request, principal)
    except CthmError as exc:
        return _unavailable(exc)
    return _html(_status_page(view, principal, refresh))


async def _login(request: Request) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return _login_page(request, "Send the login form (application/x-www-form-urlencoded).", 400)
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        values = parse_qs(body, max_num_fields=4).get("token", [])
    except ValueError:  # more fields than the form has
        values = []
    token = values[0].strip() if len(values) == 1 else ""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return _login_page(request, "Paste an API token.", 400)
    try:
        await _authenticate(request, token)
    except AuthFailure:
        # One answer whatever the cause, as the API's 401: nothing to learn from it.
        return _login_page(request, "That token was not accepted.", 401)
    except CthmError as exc:
        return _unavailable(exc)
    # Back to the page, at the refresh the login form was opened with (a bookmarked ?refresh=).
    response = RedirectResponse("./" + _refresh_query(request), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def _logout(request: Request) -> Response:
    response = RedirectResponse("./", status_code=303)
    _forget(response)
    return response


def _forget(response: Response) -> None:
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")


async def _authenticate(request: Request, token: str) -> Principal:
    """The token's principal, as the API's middleware finds it; AuthFailure (after the
    throttle's wait, and counted for the audit trail as the API's 401s are) if none."""
    api: FastAPI = request.app.state.api
    context: ApiContext = api.state.cthm
    authenticator: Authenticator = api.state.authenticator
    client = client_key(request.client.host if request.client else None)
    headers = [(TOKEN_HEADER.lower().encode(), token.encode("utf-8", errors="replace"))]
    try:
        return await authenticator.authenticate(context.store, headers, client)
    except AuthFailure as failure:
        failures: FailedAuthentications = api.state.failed_authentications
        request_id = str(request.scope.get("state", {}).get("request_id", ""))
        audit = AuditContext(request_id, failure.token_id, None)
        due = failures.failed(client, audit, f"{request.method} {request.url.path}")
        if due:
            await run_in_threadpool(failures.write, due)
        raise


def _refresh(request: Request) -> int:
    text = request.query_params.get("refresh", "")
    if text.isascii() and text.isdigit() and len(text) < 6:
        return max(MIN_REFRESH, min(MAX_REFRESH, int(text)))
    return DEFAULT_REFRESH


def _refresh_query(request: Request) -> str:
    """The query `?refresh=N` when the request asked for a refresh of its own, else ""."""
    refresh = _refresh(request)
    return "" if "refresh" not in request.query_params else f"?refresh={refresh}"


# --- what the page shows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    routers: list[Router]
    more_routers: bool
    bindings: Mapping[str, list[HelperBinding]]
    hosts: Mapping[str, list[str]]
    agents: list[dict[str, Any]] | None  # None: this token may not see them
    read_at: datetime


def _read(request: Request, principal: Principal) -> View:
    """Everything the page shows, in one read transaction (a worker thread: it blocks)."""
    api: FastAPI = request.app.state.api
    context: ApiContext = api.state.cthm
    store: Store = context.store
    scope = policy.list_scope(principal)
    routers_allowed = policy.allowed(principal, "get_router", scope)
    agents_allowed = policy.allowed(principal, "get_agent", None)
    query = ListQuery(
        scope={"project_id": (scope,)} if scope is not None else {},
        sort=(("name", SortDir.ASC), ("id", SortDir.ASC)),
        limit=MAX_ROUTERS + 1,
    )
    now = datetime.now(UTC)
    with store.unit_of_work(write=False) as repo:
        routers = repo.list_routers(query) if routers_allowed else []
        more = len(routers) > MAX_ROUTERS
        routers = routers[:MAX_ROUTERS]
        ids = [router.id for router in routers]
        bindings = repo.bindings_of(ids) if ids else {}
        local: str | None = api.state.local_agent_host
        if local is not None:
            hosts: dict[str, list[str]] = {router_id: [local] for router_id in ids}
        else:
            hosts = repo.hosts.placement(ids) if ids else {}
        agents: list[dict[str, Any]] | None = None
        if agents_allowed:
            provider: AgentsProvider | None = api.state.agents
            agents = [agent_body(report) for report in (provider() if provider else ())]
            down_time = context.settings.agent_down_time
            deployment = repo.deployment_id()
            agents += [
                node_agent_body(agent, now, down_time, deployment) for agent in repo.hosts.agents()
            ]
    routers.sort(key=lambda r: STATUS_ORDER.get(r.status.value, 3))  # stable: by name within
    return View(routers, more, bindings, hosts, agents, now)


# --- HTML --------------------------------------------------------------------------------------


def _html(body: str, status: int = 200) -> HTMLResponse:
    response = HTMLResponse(body, status_code=status)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def _document(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh is not None else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{_e(title)}</title><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _login_page(request: Request, message: str | None = None, status: int = 200) -> HTMLResponse:
    note = f'<p class="error" id="message">{_e(message)}</p>' if message else ""
    action = "login" + _refresh_query(request)
    body = (
        "<h1>cthm status</h1>\n"
        f"{note}"
        f'<form class="login" method="post" action="{_e(action)}">'
        '<label for="token">API token (admin, reader or member; <code>cthm token create'
        "</code>)</label>"
        '<input type="password" id="token" name="token" autocomplete="off" required>'
        '<button type="submit">Log in</button></form>'
    )
    return _html(_document("cthm status: log in", body), status)


def _unavailable(exc: CthmError) -> HTMLResponse:
    log.warning("status page: cannot read the database: %s", exc.message)
    body = (
        "<h1>cthm status</h1>"
        '<p class="error">The database cannot be read right now; this page tries again '
        "by itself.</p>"
    )
    return _html(_document("cthm status: unavailable", body, refresh=DEFAULT_REFRESH), 503)


def _status_page(view: View, principal: Principal, refresh: int) -> str:
    counts = Counter(router.status.value for router in view.routers)
    summary = ", ".join(f"{counts[s]} {s}" for s in ("ACTIVE", "PENDING", "ERROR"))
    who = "every project" if policy.list_scope(principal) is None else principal.project_id
    roles = ", ".join(sorted(principal.roles))
    stamp = format_timestamp(view.read_at)
    header = (
        "<header><div><h1>cthm status</h1>"
        f'<p class="muted">Routers of {_e(who)} (token roles: {_e(roles)}). '
        f'Read at <span id="read-at">{_e(stamp)}</span>; refreshes every {refresh} s.</p>'
        "</div>"
        '<form method="post" action="logout"><button type="submit">Log out</button></form>'
        "</header>"
    )
    parts = [header, _agents_section(view.agents)]
    more = (
        f'<p class="muted">More than {MAX_ROUTERS} routers: the first {MAX_ROUTERS} by name are '
        "shown; <code>cthm status</code> lists them all.</p>"
        if view.more_routers
        else ""
    )
    parts.append(
        f'<h2>Routers <span class="muted" id="router-summary">{len(view.routers)}: '
        f"{_e(summary)}</span></h2>{more}"
    )
    parts.append(_routers_table(view))
    return _document("cthm status", "\n".join(parts), refresh=refresh)


def _agents_section(agents: list[dict[str, Any]] | None) -> str:
    if agents is None:
        return '<h2>Agents</h2><p class="muted">Agents are shown to admin tokens only.</p>'
    if not agents:
        return '<h2>Agents</h2><p class="muted">No agent has reported.</p>'
    rows = []
    for agent in agents:
        conf: Mapping[str, Any] = agent.get("configurations") or {}
        counts: Mapping[str, Any] = conf.get("counts") or {}
        alive = (
            '<span class="alive">alive</span>'
            if agent["alive"]
            else '<span class="dead">down</span>'
        )
        unclaimed = conf.get("unclaimed_kernel_state") or {}
        rows.append(
            f'<tr id="agent-{_e(agent["id"])}"><td>{_e(agent["host"])}</td><td>{alive}</td>'
            f"<td>{_e(conf.get('backend'))}</td><td>{_e(conf.get('routers'))}</td>"
            f"<td>{_e(conf.get('queue_depth'))}</td><td>{_e(counts.get('applied'))}</td>"
            f'<td class="drift">{_e(counts.get("drift"))}</td>'
            f'<td class="failed">{_e(counts.get("failed"))}</td>'
            f"<td>{_e(agent.get('heartbeat_timestamp'))}</td>"
            f"<td>{_e(', '.join(f'{k} ({v})' for k, v in sorted(unclaimed.items())))}</td></tr>"
        )
    head = (
        "<tr><th>Host</th><th>State</th><th>Backend</th><th>Routers</th><th>Queue</th>"
        "<th>Applied</th><th>Drift repairs</th><th>Failures</th><th>Last report</th>"
        "<th>Unclaimed kernel state</th></tr>"
    )
    return f'<h2>Agents</h2><table id="agents">{head}{"".join(rows)}</table>'


def _routers_table(view: View) -> str:
    if not view.routers:
        return '<p class="muted">No routers.</p>'
    head = (
        "<tr><th>Router</th><th>Project</th><th>Namespace</th><th>Hosts</th><th>Status</th>"
        "<th>Bindings</th><th>Errors</th><th>Updated</th></tr>"
    )
    rows = [
        _router_row(r, view.bindings.get(r.id, []), view.hosts.get(r.id, [])) for r in view.routers
    ]
    return f'<table id="routers">{head}{"".join(rows)}</table>'


def _router_row(router: Router, bindings: list[HelperBinding], hosts: Iterable[str]) -> str:
    status = router.status.value
    tally = Counter(binding.status.value for binding in bindings)
    shown = ", ".join(f"{n} {s}" for s, n in sorted(tally.items())) or "none"
    errors = [router.status_reason] if router.status_reason else []
    errors += [
        f"{b.protocol.value}/{b.port} {b.direction.value} {b.helper}: {b.status_reason}"
        for b in sorted(bindings)
        if b.status.value == "ERROR" and b.status_reason and b.status_reason != router.status_reason
    ]
    error_list = (
        '<ul class="errors">' + "".join(f"<li>{_e(text)}</li>" for text in errors) + "</ul>"
        if errors
        else ""
    )
    return (
        f'<tr id="router-{_e(router.id)}" class="router">'
        f'<td class="name">{_e(router.name)}<br><span class="muted">{_e(router.id)}</span></td>'
        f"<td>{_e(router.project_id)}</td><td>{_e(router.namespace)}</td>"
        f'<td class="hosts">{_e(", ".join(hosts)) or "none"}</td>'
        f'<td class="status status-{_e(status)}">{_e(status)}</td>'
        f'<td class="bindings">{len(bindings)}: {_e(shown)}</td>'
        f'<td class="reason">{error_list}</td>'
        f"<td>{_e(format_timestamp(router.updated_at))}</td></tr>"
    )
