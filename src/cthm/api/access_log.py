"""The access log: one INFO line per answered request on the `cthm.access` logger.

`GET /v2.0/routers/{router_id} 200 3.1ms req-... client 127.0.0.1`: the method, the matched
route's template (never the raw path: ids and anything a client put in a path stay out), the
status, the duration, the request id (X-Openstack-Request-Id, as in the audit trail) and the
client's address. No query string, no header: nothing a secret could be in. Written by the
outermost middleware (app.RequestContextMiddleware), so a 401 answered before routing is logged
too.
"""

from __future__ import annotations

import logging

from starlette.types import Scope

log = logging.getLogger("cthm.access")


def log_answer(scope: Scope, route: str, status: int, seconds: float, request_id: str) -> None:
    """The line of one answered request (`route`: route_template's; request_id "-" when no
    answer was sent)."""
    if not log.isEnabledFor(logging.INFO):
        return
    client = scope.get("client")
    log.info(
        "%s %s %d %.1fms %s client %s",
        scope.get("method", "-"),
        route,
        status,
        seconds * 1000,
        request_id,
        client[0] if client else "-",
    )
