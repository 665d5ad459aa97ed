"""The HTTP front door: how long a client may take to send a request, and how many may be open.

The protocol is uvicorn's httptools one (llhttp, in C: ~10% of a create's CPU less than h11's
pure Python). httptools bounds no request head; here its request line and headers are bounded
(MAX_HEAD_BYTES: a larger head is answered 400 and the connection closed). h11 bounded only the
part of a head still incomplete (uvicorn's 16 KiB): a whole head arriving in one read passed at
any size.

uvicorn's HTTP protocols never time out a request that is only half sent: a client that opens
connections and sends part of a request line and headers holds each one, and its descriptor,
forever. Enough of them used up the process's open-file limit, and with it the agent's access
to /run/netns. Here every connection has `header_timeout` seconds to send its request line and
headers, and as long again for its body; an idle kept-alive connection waits for its next
request under the same deadline (uvicorn's own keep-alive timeout usually closes it first).

At most `max_connections` are open. A new connection beyond the cap closes the oldest one that
is idle or still sending its request (it has done nothing useful yet); only when every open
connection is busy with a request is the new one closed instead. The check runs as the
connection is made, so the number of descriptors API clients hold stays bounded and the rest
of the open-file limit stays with the agent and the database.

What happens to many connections is logged at a bounded rate (`RateLimitedLog`): one line per
interval with a count, never one per connection. The same goes for the event loop's errors
(`socket.accept() out of system resource` used to be logged, with a traceback, thousands of
times a second).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("cthm.server")

LOG_INTERVAL = 10.0
# A request's line and headers, at most (the size of uvicorn's h11 bound on an incomplete head).
MAX_HEAD_BYTES = 16 * 1024

Phase = Literal["head", "body", "busy"]


class RateLimitedLog:
    """Logs an event of each kind at most once per `interval` seconds, with how many there were
    since the last line of that kind. The first of a kind is logged at once."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def event(
        self, kind: str, message: str, *, level: int = logging.WARNING, exc_info: Any = None
    ) -> bool:
        """Counts one event of `kind`; logs `message` (with the count) if its turn has come.
        Returns whether a line was written."""
        now = self._clock()
        count = self._unlogged.get(kind, 0) + 1
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._unlogged[kind] = count
            return False
        self._last[kind] = now
        self._unlogged[kind] = 0
        if last is None or count == 1:
            self.logger.log(level, "%s", message, exc_info=exc_info)
        else:
            self.logger.log(level, "%s (%d times in the last %.0fs)", message, count, now - last)
        return True

    def seen(self, kind: str) -> bool:
        return kind in self._last


class FrontDoor:
    """What one server's connections share: the limits, the count of open connections, the
    ones waiting for a request in the order they started waiting, and the bounded log."""

    def __init__(
        self,
        *,
        header_timeout: float,
        max_connections: int,
        events: RateLimitedLog | None = None,
    ) -> None:
        if header_timeout <= 0 or max_connections < 1:
            raise ValueError("header_timeout > 0 and max_connections >= 1")
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.events = events or RateLimitedLog(log)
        self.open = 0
        self.waiting: OrderedDict[GuardedHttpProtocol, None] = OrderedDict()

    def protocol_class(self) -> type[GuardedHttpProtocol]:
        """uvicorn's httptools protocol bound to this door (uvicorn builds protocols by class)."""
        return type("GuardedHttp", (GuardedHttpProtocol,), {"door": self})

    def admit(self, connection: GuardedHttpProtocol) -> bool:
        """Counts a new connection; makes room when the cap is reached. False: refuse it."""
        self.open += 1
        if self.open <= self.max_connections:
            return True
        victim = next(iter(self.waiting), None)
        if victim is None:  # every open connection is busy with a request
            self.open -= 1
            self.events.event(
                "refused",
                f"{self.max_connections} connections are busy (max_connections): "
                "refused a new connection",
            )
            return False
        victim.evict()
        self.events.event(
            "evicted",
            f"{self.max_connections} connections open (max_connections): closed the oldest "
            "idle or incomplete one to admit a new one",
        )
        return True

    def release(self) -> None:
        self.open -= 1

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's error handler: the same line, with a count, at most once per
        interval per kind of message; the traceback only the first time, and never for an
        OSError (accept() out of descriptors is a condition, not a bug: the line says it)."""
        message = str(context.get("message") or "event loop error")
        exception = context.get("exception")
        text = f"{message}: {exception}" if exception is not None else message
        first = not self.events.seen(f"loop:{message}")
        trace = isinstance(exception, BaseException) and not isinstance(exception, OSError)
        self.events.event(
            f"loop:{message}",
            text,
            level=logging.ERROR,
            exc_info=exception if first and trace else None,
        )


class HeadTooLarge(Exception):
    """A request line and headers over MAX_HEAD_BYTES (raised in httptools' callback: 400)."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request, a bound on its head and a
    cap on connections."""

    door: ClassVar[FrontDoor]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: Phase = "busy"
        self._admitted = False
        self._waiting_since: object = None  # the cycle that was current when waiting began
        self._heard = False  # bytes arrived since waiting began
        self._deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # of the request being parsed: its URL, header names and values

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.door.admit(self):
            transport.abort()
            return
        self._admitted = True
        self._wait_for_request(after=None)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_deadline()
        self.door.waiting.pop(self, None)
        if self._admitted:
            self._admitted = False
            self.door.release()

    def data_received(self, data: bytes) -> None:
        self._heard = True
        super().data_received(data)
        self._progress()

    # The parser's callbacks, counting the head as it comes: raising in one makes httptools
    # fail the request (HttpParserError), which uvicorn answers 400 and closes.
    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"a request head over {MAX_HEAD_BYTES} bytes")

    def on_response_complete(self) -> None:
        finished = self.cycle
        # httptools parses a pipelined request's head while the one before is answered and
        # queues it: it starts now, its head arrived (no longer a request being waited for).
        pipelined = bool(self.pipeline)
        super().on_response_complete()  # may start a pipelined request at once
        if self.transport.is_closing():
            return
        if pipelined:
            self.door.waiting.pop(self, None)
            self._phase = "body"
            self._arm()
        else:
            self._wait_for_request(after=finished)
        self._progress()

    def evict(self) -> None:
        """Closes this connection to make room for a new one; uncounted at once."""
        self.door.waiting.pop(self, None)
        if self._admitted:
            self._admitted = False
            self.door.release()
        self._cancel_deadline()
        self.transport.abort()

    def _wait_for_request(self, *, after: object) -> None:
        self._phase = "head"
        self._waiting_since = after
        self._heard = False
        self.door.waiting.pop(self, None)
        self.door.waiting[self] = None  # the newest waiter last: the oldest goes first
        self._arm()

    def _progress(self) -> None:
        """Moves on when the request's head, then its body, has arrived."""
        if (
            self._phase == "head"
            and self.cycle is not None
            and self.cycle is not self._waiting_since
        ):
            self.door.waiting.pop(self, None)
            self._phase = "body"
            self._arm()  # the body gets as long as the head had
        if self._phase == "body" and not self.cycle.more_body:
            self._phase = "busy"
            self._cancel_deadline()

    def _arm(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.door.header_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._phase == "busy" or self.transport.is_closing():
            return
        # A kept-alive connection that stayed silent is just idle: closed without a word, as
        # uvicorn's keep-alive timeout does. Anything else was a request that never arrived.
        if self._phase == "body" or self._heard or self._waiting_since is None:
            what = "request line and headers" if self._phase == "head" else "request body"
            self.door.events.event(
                f"timeout:{self._phase}",
                f"closed connections that did not send their {what} within "
                f"{self.door.header_timeout:g}s (header_timeout)",
                level=logging.INFO,
            )
        self.door.waiting.pop(self, None)
        self.transport.close()
