"""GET /v2.0/watch?since=REV[&host=H][&timeout=S]: the change feed, as a long poll.

Every change to a router's desired state (a binding added, changed or removed; the router
created or deleted) gets a revision from one increasing sequence (the store's change log). A
watch from REV answers at once with the changes after REV (at most MAX_EVENTS); with a host,
only those of routers whose namespace that host reports, so an agent hears only of its own
routers. With none it waits, without holding a worker thread, until a change commits (woken
by Store.subscribe: in-process, and on PostgreSQL for every replica's commits through
LISTEN/NOTIFY; the database is read again every RECHECK_INTERVAL seconds in any case) or until
`timeout` passes.

The answer's `revision` is where the next watch resumes: the last event's when the answer was
cut at MAX_EVENTS, else the head revision, so a watch that heard nothing still moves forward
(`bookmark`: no events). A REV the feed no longer holds (older than the retained history, or
newer than its head: another database) is answered 410 ResourceVersionGone: list again
(GET /v2.0/hosts/{host}/routers), then watch from the list's revision. Kubernetes' watch, as
client-go's Reflector uses it.

Why a long poll and not a stream: every answer is a whole JSON document a plain HTTP client
reads, the front door's limits need no exception for never-ending responses, and a cut
connection costs at most one request: the agent resumes from the revision it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cthm.api import policy
from cthm.api.deps import PrincipalDep, QueryDep
from cthm.api.errors import error_response, shown
from cthm.api.query import Params, parse_int
from cthm.api.routes._shared import FORBIDDEN, respond
from cthm.domain import InvalidInput, validate_host
from cthm.store import Store

router = APIRouter(prefix="/v2.0/watch", tags=["watch"])

MAX_EVENTS = 500
DEFAULT_TIMEOUT = 25.0
MAX_TIMEOUT = 60.0
# How often a waiting watch reads the database anyway: on SQLite, changes committed by another
# process wake no one here; on PostgreSQL a notification lost with the listener's connection.
RECHECK_INTERVAL = 1.0
ACTION = "watch_changes"
GONE = "ResourceVersionGone"


# --- waking waiting watches --------------------------------------------------------------------


class Waiter:
    """One waiting watch: an event on the loop serving its request, set from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Thread-safe; a loop already closed (its request is over) is ignored."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._event.set)

    def reset(self) -> None:
        """Before each read of the database: a commit after it wakes the next wait()."""
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._event.wait()


class WatchHub:
    """The waiting watches of one app, woken by every commit that changed a router (the
    store's change notification: it carries router ids only; each watch reads its own
    changes again, so nothing is missed whatever thread commits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[Waiter] = set()
        self._closed = False

    def notify(self, changed: frozenset[str]) -> None:
        """Store.subscribe's callback: runs in the committing thread."""
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()

    def close(self) -> None:
        """For a server shutting down: every waiting watch answers now (a bookmark), and later
        ones do not wait, so no long poll holds the shutdown up."""
        with self._lock:
            self._closed = True
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()

    @property
    def closed(self) -> bool:
        return self._closed

    @contextlib.contextmanager
    def waiter(self) -> Iterator[Waiter]:
        waiter = Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiters)


# --- bodies ------------------------------------------------------------------------------------


class WatchEvent(BaseModel):
    revision: int
    type: Literal["MODIFIED", "DELETED", "RESYNC"] = Field(
        description="RESYNC: nothing desired changed; reconcile the router in full"
    )
    router_id: str
    namespace: str


class WatchResponse(BaseModel):
    revision: int = Field(description="resume the next watch from here (since=revision)")
    events: list[WatchEvent] = Field(description=f"oldest first, at most {MAX_EVENTS}")
    bookmark: bool = Field(description="no events: only the revision moved")


PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "since",
        "in": "query",
        "required": True,
        "description": "the revision the caller holds (from a list, or the last watch)",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "host",
        "in": "query",
        "required": False,
        "description": "only the changes of routers placed on this host (a host-limited "
        "token must give its host); absent: every change",
        "schema": {"type": "string"},
    },
    {
        "name": "timeout",
        "in": "query",
        "required": False,
        "description": "seconds to wait for a change when there is none",
        "schema": {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT},
    },
]


@dataclass(frozen=True, slots=True)
class WatchQuery:
    since: int
    host: str | None
    timeout: float


@dataclass(frozen=True, slots=True)
class Gone:
    message: str


# --- the route ---------------------------------------------------------------------------------


@router.get(
    "",
    response_model=WatchResponse,
    responses={
        **FORBIDDEN,
        410: {"description": "since is not in the retained history: list again"},
    },
    openapi_extra={"parameters": PARAMETERS},
)
async def watch_changes(
    request: Request, params: QueryDep, principal: PrincipalDep
) -> JSONResponse:
    policy.enforce(principal, ACTION, None, target_type="watch")
    query = parse_watch(params)
    policy.enforce_host(principal, ACTION, query.host)
    hub: WatchHub = request.app.state.watch_hub
    store: Store = request.app.state.cthm.store
    deadline = anyio.current_time() + query.timeout
    with hub.waiter() as waiter:
        while True:
            waiter.reset()
            found = await run_in_threadpool(read_changes, store, query.since, query.host)
            if isinstance(found, Gone):
                return error_response(410, GONE, found.message)
            remaining = deadline - anyio.current_time()
            if found["events"] or remaining <= 0 or hub.closed:
                return respond(200, found)
            if await request.is_disconnected():  # nobody to answer: stop reading the database
                return respond(200, found)
            await waiter.wait(min(RECHECK_INTERVAL, remaining))


def parse_watch(params: Params) -> WatchQuery:
    values: dict[str, str] = {}
    for key, value in params:
        if key not in ("since", "host", "timeout"):
            raise InvalidInput(
                f"unknown query parameter {shown(key)} (accepted here: host, since, timeout)"
            )
        if key in values:
            raise InvalidInput("may be given only once", field=key)
        values[key] = value
    if "since" not in values:
        raise InvalidInput("is required: the revision to watch from (0: from the start)", "since")
    since = parse_int(values["since"], "since")
    if since < 0:
        raise InvalidInput("must be 0 or more", field="since")
    host = values.get("host")
    timeout = DEFAULT_TIMEOUT if "timeout" not in values else _seconds(values["timeout"])
    return WatchQuery(since, None if host is None else validate_host(host, "host"), timeout)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"{shown(text)} is not a number of seconds", field="timeout") from None
    if not 0 <= value <= MAX_TIMEOUT:  # NaN fails too
        raise InvalidInput(f"must be between 0 and {MAX_TIMEOUT:g} seconds", field="timeout")
    return value


def read_changes(store: Store, since: int, host: str | None) -> dict[str, Any] | Gone:
    """The answer to a watch from `since` as the database is now, read in one transaction (the
    head and the events agree); Gone when `since` is outside the retained history."""
    with store.unit_of_work(write=False) as repo:
        feed = repo.hosts
        head = feed.head_revision()
        oldest = feed.oldest_revision()
        if since > head or (oldest is not None and since < oldest - 1):
            shown_oldest = "none" if oldest is None else str(oldest)
            return Gone(
                f"revision {since} is not in the retained history (oldest {shown_oldest}, head "
                f"{head}): list again"
            )
        namespaces = None if host is None else feed.host_namespaces(host)
        changes = feed.changes_since(since, namespaces, MAX_EVENTS + 1)
    cut = len(changes) > MAX_EVENTS
    changes = changes[:MAX_EVENTS]
    resume = changes[-1].revision if cut else head
    if changes and not cut:
        # On PostgreSQL (READ COMMITTED) each statement sees the commits made before it: the
        # events may go past the head read just before; resuming from it would repeat them.
        resume = max(head, changes[-1].revision)
    return {
        "revision": resume,
        "events": [
            {
                "revision": change.revision,
                "type": change.kind,
                "router_id": change.router_id,
                "namespace": change.namespace,
            }
            for change in changes
        ],
        "bookmark": not changes,
    }
