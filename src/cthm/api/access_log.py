"""The access log: one INFO line per answered request on the `cthm.access` logger.

`GET /v2.0/routers/{router_id} 200 3.1ms req-... client 127.0.0.1`: the method, the matched
route's template (never the raw path: ids and anything a client put in a path stay out), the
status, the duration, the request id (X-Openstack-Request-Id, as in the audit trail) and the
client's address. No query string, no header: nothing a secret could be in. A pure ASGI
middleware, outermost, so a 401 answered before routing is logged too.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cthm.api.request_metrics import route_template

log = logging.getLogger("cthm.access")

REQUEST_ID_HEADER = b"x-openstack-request-id"


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception nothing answered
        request_id = "-"

        async def send_noting(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == REQUEST_ID_HEADER:
                        request_id = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            client = scope.get("client")
            log.info(
                "%s %s %d %.1fms %s client %s",
                scope.get("method", "-"),
                route_template(scope),
                status,
                (time.perf_counter() - started) * 1000,
                request_id,
                client[0] if client else "-",
            )
