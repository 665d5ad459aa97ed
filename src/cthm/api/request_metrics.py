"""The API's request metrics (cthm.metrics), counted by the outermost middleware
(app.RequestContextMiddleware), so every answer is counted (a 401 before routing, a 413, a 500
included).

The route label is the matched route's template (`/v2.0/routers/{router_id}`), never the raw
path: ids would make one series per object. A route of a mounted app (the status page) is
labelled with the mount's path before it (`/ui/`, `/ui/login`). FastAPI puts the matched
route in the scope; a request answered before routing (authentication) is matched here against
the app's routes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

from cthm import metrics

UNMATCHED = "unmatched"


def count_answer(scope: Scope, route: str, status: int, seconds: float) -> None:
    """One answered request in the metrics (`route`: route_template's)."""
    method = metrics.normal_method(str(scope.get("method", "")))
    duration, requests = _series(method, route, status)
    duration.observe(seconds)
    requests.inc()


# The labelled series of a (method, route, status): looked up by prometheus-client's labels()
# once, not on every request. Bounded as the series themselves are (methods are normalised,
# routes are templates or UNMATCHED, statuses are the few the API answers).
@functools.cache
def _series(method: str, route: str, status: int) -> tuple[Histogram, Counter]:
    return (
        metrics.API_REQUEST_DURATION.labels(method=method, route=route),
        metrics.API_REQUESTS.labels(method=method, route=route, code=str(status)),
    )


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
