"""The API's request metrics (cthm.metrics): a pure ASGI middleware, outermost, so every answer
is counted (a 401 before routing, a 413, a 500 included).

The route label is the matched route's template (`/v2.0/routers/{router_id}`), never the raw
path: ids would make one series per object. A route of a mounted app (the status page) is
labelled with the mount's path before it (`/ui/`, `/ui/login`). FastAPI puts the matched
route in the scope; a request answered before routing (authentication) is matched here against
the app's routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cthm import metrics

UNMATCHED = "unmatched"


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # an exception nothing answered

        async def send_noting_code(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_noting_code)
        finally:
            method = metrics.normal_method(str(scope.get("method", "")))
            route = route_template(scope)
            metrics.API_REQUEST_DURATION.labels(method=method, route=route).observe(
                time.perf_counter() - started
            )
            metrics.API_REQUESTS.labels(method=method, route=route, code=str(code)).inc()


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(route, Mount):  # inside a mounted app (/ui), no route of its own: a 404
        return UNMATCHED
    if isinstance(path, str):
        # A mounted app's route carries its path within the mount: /ui's "/login" is
        # "/ui/login", never the API's own "/" or a clash with it.
        return _mount_prefix(scope) + path
    partial: str | None = None  # the path exists, not with this method (a 405)
    for candidate in _leaves(getattr(getattr(scope.get("app"), "router", None), "routes", [])):
        if isinstance(candidate, Mount):
            if scope.get("path") == candidate.path:  # /ui: redirected to /ui/
                return candidate.path
            continue
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", UNMATCHED))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(candidate, "path", UNMATCHED))
    return partial or UNMATCHED


def _mount_prefix(scope: Scope) -> str:
    """The path of the mount the matched route is in ("" outside any): Starlette's Mount
    sets app_root_path (the root before it) and root_path (with the mount's path)."""
    if "app_root_path" not in scope:
        return ""
    root, outer = str(scope.get("root_path") or ""), str(scope.get("app_root_path") or "")
    return root[len(outer) :] if root.startswith(outer) else ""


def _leaves(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """The routes themselves: FastAPI may keep an included router as one entry (its
    `original_router`), whose routes carry the router's prefix in their path."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            if not getattr(getattr(route, "include_context", None), "prefix", ""):
                yield from _leaves(included.routes)
        elif isinstance(getattr(route, "path", None), str):
            yield route
