"""The API's request metrics (cthm.metrics): a pure ASGI middleware, outermost, so every answer
is counted (a 401 before routing, a 413, a 500 included).

The route label is the matched route's template (`/v2.0/routers/{router_id}`), never the raw
path: ids would make one series per object. FastAPI puts the matched route in the scope; a
request answered before routing (authentication) is matched here against the app's routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from starlette.routing import BaseRoute, Match
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
    if isinstance(path, str):
        return path
    partial: str | None = None  # the path exists, not with this method (a 405)
    for candidate in _leaves(getattr(getattr(scope.get("app"), "router", None), "routes", [])):
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", UNMATCHED))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(candidate, "path", UNMATCHED))
    return partial or UNMATCHED


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
