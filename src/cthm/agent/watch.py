"""Follows the API's change feed for one host: list, then watch from the list's revision.

As client-go's Reflector does: the list gives a revision R (read in the same transaction as the
routers), on_relist() then queues every router again (its reads come after R, so they see at
least R), and the long poll `GET /v2.0/watch?since=R&host=H` returns the changes after R, which
on_changes() queues by router id. Each answer's revision (the last event's, or the head's as a
bookmark) is the next `since`: a cut connection resumes where it was, missing nothing. An event
of kind RESYNC (`cthm router resync`: nothing desired changed) goes to on_resync() instead, which
makes the router's next reconcile a full one; any other kind is a change to reconcile.

Any doubt means listing again: a 410 (R left the retained history, or the server's history is
not the one R came from: a restored database), or any failed request, after a capped
exponential backoff with jitter (0.2 s .. 30 s). Nothing here touches the kernel: while the API
is away the routers keep what they have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cthm.agent.remote import ApiClient, ApiRefused, Backoff
from cthm.domain import CHANGE_RESYNC, Unavailable

log = logging.getLogger(__name__)

POLL_TIMEOUT = 25.0  # seconds the server holds a watch request without changes
LOG_INTERVAL = 60.0  # one warning a minute while the API is unreachable


class ChangeWatcher:
    def __init__(
        self,
        client: ApiClient,
        host: str,
        on_changes: Callable[[Iterable[str]], None],
        on_relist: Callable[[], None],
        *,
        poll_timeout: float = POLL_TIMEOUT,
        backoff: Backoff | None = None,
        on_resync: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self._client = client
        self._host = host
        self._on_changes = on_changes
        self._on_relist = on_relist
        self._on_resync = on_resync or on_changes
        self._poll_timeout = poll_timeout
        self._backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._revision: int | None = None
        self._connected = False
        self._events = 0
        self._relists = 0
        self._warned_at: float | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self._thread = threading.Thread(target=self._run, name="cthm-agent-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ends the thread, cutting a long poll in flight; True if it ended in time."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout
        while thread.is_alive() and time.monotonic() < deadline:
            # Repeated: the thread may be between two requests when the first one lands.
            self._client.interrupt(thread)
            thread.join(0.05)
        if thread.is_alive():
            log.error("the watch thread is still running after %.1fs", timeout)
            return False
        return True

    def counters(self) -> dict[str, Any]:
        """For the heartbeat's configurations.watch."""
        with self._lock:
            return {
                "revision": self._revision,
                "connected": self._connected,
                "events": self._events,
                "relists": self._relists,
            }

    @property
    def revision(self) -> int | None:
        with self._lock:
            return self._revision

    def _run(self) -> None:
        since: int | None = None  # None: list first
        gone = 0  # 410s in a row: the first lists again at once, the next ones back off
        while not self._stop.is_set():
            try:
                if since is None:
                    since = self._list()
                since = self._watch(since)
                self._backoff.reset()
                gone = 0
            except ApiRefused as exc:
                since = None
                if exc.status == 410:
                    gone += 1
                    if gone == 1:
                        log.info("watch: %s; listing again", exc.message)
                    else:
                        self._failed(f"the API keeps answering 410: {exc.message}")
                    continue
                self._failed(f"the API refused the watch: {exc}")
            except Unavailable as exc:
                self._failed(exc.message)
                since = None
            except Exception:  # never let the watch die: the kernel would stop following
                log.exception("watch failed")
                self._failed("internal error")
                since = None

    def _list(self) -> int:
        answer = self._client.host_routers(self._host)
        try:
            revision = int(answer["revision"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"unexpected router list from the API: {exc!r:.200}") from exc
        self._on_relist()  # after the list: what it queues is read at or after `revision`
        with self._lock:
            self._revision = revision
            self._relists += 1
            self._connected = True
        return revision

    def _watch(self, since: int) -> int:
        answer = self._client.watch(since, self._host, self._poll_timeout)
        try:
            revision = int(answer["revision"])
            events = [(str(event["router_id"]), event.get("type")) for event in answer["events"]]
            count = len(answer["events"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"unexpected watch answer from the API: {exc!r:.200}") from exc
        resyncs = {router_id for router_id, kind in events if kind == CHANGE_RESYNC}
        router_ids = {router_id for router_id, kind in events if kind != CHANGE_RESYNC}
        if resyncs:
            self._on_resync(sorted(resyncs))
        if router_ids:
            self._on_changes(sorted(router_ids))
        with self._lock:
            self._revision = revision
            self._events += count
            self._connected = True
            if self._warned_at is not None:
                log.info("watch: connected to the API again")
                self._warned_at = None
        return revision

    def _failed(self, why: str) -> None:
        delay = self._backoff.next()
        now = time.monotonic()
        with self._lock:
            self._connected = False
            warn = self._warned_at is None or now - self._warned_at >= LOG_INTERVAL
            if warn:
                self._warned_at = now
        if self._stop.is_set():
            return
        if warn:
            log.warning("watch: %s; listing again in %.1fs (kernel left as it is)", why, delay)
        self._stop.wait(delay)
