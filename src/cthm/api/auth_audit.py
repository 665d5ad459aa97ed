"""Failed authentications (401) in the audit trail: one event per client per window, counted.

A client that fails 10,000 times must not write 10,000 rows, and must not be able to look like
10,000 clients either (the client is the TCP peer, or what a proxy the operator named says; an
IPv6 client is its /64, as the throttle counts it). So the first failure of a client (and of the
token it sent, when that token exists) in a window writes one `authenticate` event at once,
before its 401 is sent: time and request id of that first failure, the token's id (never the
token), and the first request in `detail`. Every later failure in the window only counts;
the same event is rewritten with the count (`after.failures`, `after.last_failure`, and
`detail`) at most every `flush_interval` seconds while failures go on, by `flush()` (called
periodically by the application and at shutdown), and when the window is over. A crash loses
at most the last `flush_interval` seconds of counting, never the event. The next failure after
the window starts a new event.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cthm.api.audit import UNAUTHENTICATED_ACTION, UNAUTHENTICATED_TARGET
from cthm.store import AuditContext, Store
from cthm.store.audit import format_time

log = logging.getLogger(__name__)

WINDOW = 60.0
FLUSH_INTERVAL = 2.0
MAX_OPEN = 10_000
ERROR_LOG_INTERVAL = 10.0


@dataclass(slots=True)
class _Window:
    """One client's failures in one window; `stored` is the count the database holds."""

    event_id: str
    client: str
    context: AuditContext
    first_request: str
    opened: float  # monotonic
    first: datetime
    last: datetime
    count: int = 1
    stored: int = 0
    written: float = 0.0  # monotonic time of the last write


def _now() -> datetime:
    return datetime.now(UTC)


class FailedAuthentications:
    """Counts 401s per (client, token id) and writes them as above. Thread-safe: `failed` is
    called on the event loop, the writes run in worker threads; one lock guards the counts
    (never held across a write) and another orders the writes (a count never goes back)."""

    def __init__(
        self,
        store: Store,
        *,
        window: float = WINDOW,
        flush_interval: float = FLUSH_INTERVAL,
        max_open: int = MAX_OPEN,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _now,
    ) -> None:
        if window <= 0 or flush_interval <= 0 or max_open < 1:
            raise ValueError("window > 0, flush_interval > 0, max_open >= 1")
        self.store = store
        self.window = window
        self.flush_interval = flush_interval
        self.max_open = max_open
        self._clock = clock
        self._wall_clock = wall_clock
        self._open: OrderedDict[tuple[str, str | None], _Window] = OrderedDict()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._error_logged_at = -ERROR_LOG_INTERVAL

    def failed(self, client: str, context: AuditContext, request: str) -> list[_Window]:
        """Counts one failure of `client` (context: its request id and the token id, if the
        token exists). Returns the events to write now: pass them to `write` (in a thread)."""
        now, wall = self._clock(), self._wall_clock()
        key = (client, context.token_id)
        due: list[_Window] = []
        with self._lock:
            current = self._open.get(key)
            if current is not None and now - current.opened >= self.window:
                del self._open[key]
                if current.count > current.stored:
                    due.append(current)  # its final count
                current = None
            if current is None:
                current = _Window(
                    event_id=str(uuid.uuid4()),
                    client=client,
                    context=AuditContext(context.request_id, context.token_id, None),
                    first_request=request,
                    opened=now,
                    first=wall,
                    last=wall,
                )
                self._open[key] = current
                due.append(current)
                while len(self._open) > self.max_open:
                    _, oldest = self._open.popitem(last=False)
                    if oldest.count > oldest.stored:
                        due.append(oldest)
            else:
                current.count += 1
                current.last = wall
                if current.stored and now - current.written >= self.flush_interval:
                    current.written = now  # claimed: concurrent failures do not pile up writes
                    due.append(current)
        return due

    def write(self, windows: list[_Window]) -> None:
        """Writes each window's current count (blocking: call from a worker thread). A failure
        to write is logged (at a bounded rate) and retried by a later write or flush; it never
        changes the answer the client gets."""
        for window in windows:
            with self._write_lock:
                with self._lock:
                    count, last = window.count, window.last
                    window.written = self._clock()
                try:
                    self.store.save_denied_summary(
                        window.context,
                        event_id=window.event_id,
                        time=window.first,
                        action=UNAUTHENTICATED_ACTION,
                        target_type=UNAUTHENTICATED_TARGET,
                        status_code=401,
                        detail=self._detail(window, count),
                        after=self._summary(window, count, last),
                    )
                except Exception as exc:  # noqa: BLE001 (never the answer: logged, retried)
                    self._log_error(exc)
                    continue
                with self._lock:
                    window.stored = max(window.stored, count)

    def flush(self) -> None:
        """Writes every count not stored yet, and forgets windows that are over and stored."""
        now = self._clock()
        with self._lock:
            due = [w for w in self._open.values() if w.count > w.stored]
            for key, window in list(self._open.items()):
                if now - window.opened >= self.window and window.count <= window.stored:
                    del self._open[key]
        self.write(due)

    def pending(self) -> bool:
        with self._lock:
            return any(w.count > w.stored for w in self._open.values())

    def _summary(self, window: _Window, count: int, last: datetime) -> dict[str, Any]:
        return {
            "client": window.client,
            "failures": count,
            "first_failure": format_time(window.first),
            "last_failure": format_time(last),
            "window_seconds": self.window,
        }

    def _detail(self, window: _Window, count: int) -> str:
        noun = "failure" if count == 1 else "failures"
        return f"{window.first_request} ({count} {noun} from {window.client} in this window)"

    def _log_error(self, exc: Exception) -> None:
        now = self._clock()
        with self._lock:
            if now - self._error_logged_at < ERROR_LOG_INTERVAL:
                return
            self._error_logged_at = now
        log.error("could not record failed authentications in the audit trail: %s", exc)
