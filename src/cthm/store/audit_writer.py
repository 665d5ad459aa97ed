"""Denied attempts (and failed ones: allowed changes that did not take effect, recorded apart
from their rolled-back transaction) are written to the audit trail by one background thread, in
batches.

Why: a denied request must cost its caller exactly what an unknown id costs. Writing the event
in the request (a transaction and an fsync, about a millisecond) made a 404 that hides another
project's router measurably slower than a 404 for an id that names nothing, and so told them
apart. Here the request only appends the event to an in-memory queue (microseconds, never waits
for the database); the writer thread commits what is queued on a fixed tick, unrelated to when
any request came, and each event is logged on `cthm.audit` once its batch is committed.

- Durable once committed: at most one tick (`interval`) after the request; `flush()` waits for
  everything submitted so far (the audit listing does, so a reader sees every earlier denial),
  and `close()` flushes (SIGTERM reaches it through the store's close).
- The database down (Unavailable): the batch is kept and retried with capped backoff; a batch
  that fails otherwise (a constraint refusing the rows) is logged and given up.
- Never delays a response: the queue is bounded (`capacity`); when it is full the event is
  dropped, counted (`dropped`) and logged (at a bounded rate), never waited for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cthm.domain import Unavailable
from cthm.store.audit import AuditContext

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
DEFAULT_INTERVAL = 0.05
DEFAULT_BATCH = 500
MAX_RETRY_DELAY = 5.0
DROP_LOG_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class DeniedEvent:
    """A denied attempt as the request saw it; `time` is when it was denied, not written."""

    context: AuditContext
    time: datetime
    action: str
    target_type: str
    target_id: str | None
    target_project_id: str | None
    status_code: int
    detail: str
    # "denied", or "failed": an allowed change that did not take effect (written the same
    # way, apart from the change's rolled-back transaction).
    outcome: str = "denied"


BatchWriter = Callable[[Sequence[DeniedEvent]], None]


class DeniedEventWriter:
    """A bounded queue of denied events and the thread that commits them (started lazily, at
    the first event, so a store that never sees a denial runs no thread).

    write: commits one batch in one transaction (raises Unavailable when the database cannot
    take it now). Thread-safe; `submit` takes a lock held only for list operations.
    """

    def __init__(
        self,
        write: BatchWriter,
        *,
        capacity: int = DEFAULT_CAPACITY,
        interval: float = DEFAULT_INTERVAL,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        if capacity < 1 or interval <= 0 or batch < 1:
            raise ValueError("capacity >= 1, interval > 0, batch >= 1")
        self._write = write
        self._capacity = capacity
        self._interval = interval
        self._batch = batch
        self._pending: deque[DeniedEvent] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._submitted = 0  # events accepted so far
        self._finished = 0  # of those, committed or given up (in submission order)
        self.dropped = 0
        self._drop_logged_at = -DROP_LOG_INTERVAL
        self._drops_unlogged = 0

    def submit(self, event: DeniedEvent) -> bool:
        """Queues `event`; False if it was not queued (queue full: dropped; or closed)."""
        with self._changed:
            if self._closed:
                return False
            if len(self._pending) >= self._capacity:
                self._count_drop()
                return False
            self._pending.append(event)
            self._submitted += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cthm-audit-writer", daemon=True
                )
                self._thread.start()
        return True

    def flush(self, timeout: float) -> bool:
        """Waits until every event submitted before this call is committed or given up; False
        if that did not happen within `timeout` seconds (e.g. the database is down)."""
        with self._changed:
            target = self._submitted
            if self._finished >= target:
                return True
        self._wake.set()
        with self._changed:
            return self._changed.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (one attempt each, if the database is down) and stops the
        thread; later events are refused. Idempotent."""
        with self._changed:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("the audit writer did not finish within %.0fs", timeout)

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    @property
    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def _count_drop(self) -> None:
        """Under the lock. The log line is bounded in rate: one per DROP_LOG_INTERVAL."""
        self.dropped += 1
        self._drops_unlogged += 1
        now = time.monotonic()
        if now - self._drop_logged_at >= DROP_LOG_INTERVAL:
            log.warning(
                "audit queue full (%d events): %d denied attempts not recorded (%d in all)",
                self._capacity,
                self._drops_unlogged,
                self.dropped,
            )
            self._drop_logged_at = now
            self._drops_unlogged = 0

    def _run(self) -> None:
        delay = self._interval
        while True:
            # A fixed tick, not a wake-up per event: the writer's work must not line up with
            # the requests that queued it.
            self._wake.wait(delay)
            self._wake.clear()
            with self._changed:
                closing = self._closed
            ok = self._drain(final=closing)
            if closing:
                return
            delay = self._interval if ok else min(MAX_RETRY_DELAY, max(delay * 2, 0.5))

    def _drain(self, *, final: bool) -> bool:
        """Writes queued events in batches; False if the database was unavailable (the events
        stay queued, unless `final`)."""
        while True:
            with self._changed:
                batch = [self._pending[i] for i in range(min(self._batch, len(self._pending)))]
            if not batch:
                return True
            try:
                self._write(batch)
            except Unavailable as exc:
                if not final:
                    log.warning(
                        "cannot record %d denied attempts yet (%s); retrying",
                        len(self._pending),
                        exc.message,
                    )
                    return False
                log.error(
                    "stopping: %d denied attempts could not be recorded (%s)",
                    len(self._pending),
                    exc.message,
                )
                self._finish(len(self._pending))
                return False
            except Exception:
                log.exception("could not record %d denied attempts in the audit trail", len(batch))
            self._finish(len(batch))

    def _finish(self, count: int) -> None:
        with self._changed:
            for _ in range(count):
                self._pending.popleft()
            self._finished += count
            self._changed.notify_all()
