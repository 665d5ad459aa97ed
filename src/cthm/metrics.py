"""Prometheus metrics of this process: the agent's syncs, the API's requests, and the counts of
routers and bindings by status (read from the database at each scrape).

A bottom module (beside settings): the agent and the API both record here, neither imports the
other. The metric objects are made once, at import, in this module's own registry (with the
process and platform collectors), as prometheus_client intends; nothing else happens at import.
Every process has its own figures: with `cthm serve --workers N` a scrape answers from one of
the N workers (its requests), while the database gauges are the same from any of them.

Names follow kube-proxy's (`sync_proxy_rules_*`):
- cthm_agent_sync_duration_seconds{kind}: one reconcile that read or wrote the kernel, "full"
  (whole table read) or "partial" (element updates only); a reconcile that wrote and read
  nothing (sync "none") is not a sync and is not observed.
- cthm_agent_sync_last_timestamp_seconds: the end of the last reconcile that did not fail.
- cthm_agent_sync_last_queued_timestamp_seconds: the last time a router was queued.
- cthm_agent_programming_duration_seconds: from the time a router was queued (for the embedded
  agent, the store's notification right after the API's commit) to its kernel verified, for
  reconciles that applied a change (drift repairs and periodic resyncs that found nothing to do
  are not programming). A router already queued keeps its first time, so a change that joins a
  waiting router counts from when the router began waiting.
- cthm_agent_sync_failures_total{backend}, cthm_agent_drift_repairs_total.
- cthm_agent_queue_depth: routers waiting in the agent's queue, at scrape.
- cthm_routers{status}, cthm_bindings{status,helper}: at scrape, one grouped query each.
- cthm_api_requests_total{method,route,code}, cthm_api_request_duration_seconds{method,route}:
  the route is its template (`/v2.0/routers/{router_id}`), never the raw path, so the label set
  stays bounded; requests no route matches are "unmatched".
- cthm_auth_failures_total: requests refused for want of a valid token.
- cthm_binding_helper_connections / cthm_binding_helper_expectations{router,helper,protocol,
  port}: a binding's live helper usage as the agent in this process LAST read it (at its
  periodic resync, a bounded number of routers a pass: agent/usage.py); a scrape never runs
  conntrack. helper is the kernel's name; an ingress and an output binding share a series.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cthm.domain import Status

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "AgentTelemetry",
    "Census",
    "exposition",
    "forget_usage",
    "normal_method",
    "publish_usage",
    "usage_routers",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# No `*_created` series beside every counter and histogram: they double the text for nothing
# a dashboard here uses (process-wide, as the library offers it).
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
REGISTRY.register(PROCESS_COLLECTOR)
REGISTRY.register(PLATFORM_COLLECTOR)

# Reconciles take milliseconds (partial) to seconds (a full sync of a large router).
_SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_PROGRAMMING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

SYNC_DURATION = Histogram(
    "cthm_agent_sync_duration_seconds",
    "Duration of one router's sync by the agent, full (whole table read) or partial.",
    ["kind"],
    buckets=_SYNC_BUCKETS,
    registry=REGISTRY,
)
SYNC_LAST = Gauge(
    "cthm_agent_sync_last_timestamp_seconds",
    "Unix time at which the last router sync that did not fail ended.",
    registry=REGISTRY,
)
SYNC_LAST_QUEUED = Gauge(
    "cthm_agent_sync_last_queued_timestamp_seconds",
    "Unix time at which a router was last queued for a sync.",
    registry=REGISTRY,
)
PROGRAMMING_DURATION = Histogram(
    "cthm_agent_programming_duration_seconds",
    "From a change queued (the API's commit, for the embedded agent) to the kernel verified.",
    buckets=_PROGRAMMING_BUCKETS,
    registry=REGISTRY,
)
SYNC_FAILURES = Counter(
    "cthm_agent_sync_failures",
    "Router syncs that failed, by backend.",
    ["backend"],
    registry=REGISTRY,
)
DRIFT_REPAIRS = Counter(
    "cthm_agent_drift_repairs",
    "Kernel tables rewritten because they had changed behind cthm's back.",
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "cthm_api_requests",
    "API requests answered, by method, route template and status code.",
    ["method", "route", "code"],
    registry=REGISTRY,
)
API_REQUEST_DURATION = Histogram(
    "cthm_api_request_duration_seconds",
    "Time to answer an API request, by method and route template.",
    ["method", "route"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "cthm_auth_failures",
    "Requests refused because they carried no valid token.",
    registry=REGISTRY,
)
BINDING_CONNECTIONS = Gauge(
    "cthm_binding_helper_connections",
    "Conntrack entries using a binding's helper in the router's namespace, as last read.",
    ["router", "helper", "protocol", "port"],
    registry=REGISTRY,
)
BINDING_EXPECTATIONS = Gauge(
    "cthm_binding_helper_expectations",
    "Expectations a binding's helper holds in the router's namespace, as last read.",
    ["router", "helper", "protocol", "port"],
    registry=REGISTRY,
)
UsageKey = tuple[str, str, int]  # kernel helper, protocol, port
_usage_lock = threading.Lock()
_usage_shown: dict[str, set[UsageKey]] = {}  # router id -> its label sets in the gauges


def publish_usage(router_id: str, usage: Mapping[UsageKey, tuple[int, int]]) -> None:
    """The router's helper usage as last read, (connections, expectations) per binding key;
    its label sets no longer read go, so a deleted binding leaves no series behind."""
    with _usage_lock:
        for key in _usage_shown.get(router_id, set()) - set(usage):
            _remove_usage(router_id, key)
        for (helper, protocol, port), (connections, expectations) in usage.items():
            BINDING_CONNECTIONS.labels(router_id, helper, protocol, str(port)).set(connections)
            BINDING_EXPECTATIONS.labels(router_id, helper, protocol, str(port)).set(expectations)
        _usage_shown[router_id] = set(usage)


def forget_usage(router_id: str) -> None:
    """The router is gone, or its usage could not be read: no stale figures shown."""
    with _usage_lock:
        for key in _usage_shown.pop(router_id, set()):
            _remove_usage(router_id, key)


def usage_routers() -> set[str]:
    with _usage_lock:
        return set(_usage_shown)


def _remove_usage(router_id: str, key: UsageKey) -> None:
    helper, protocol, port = key
    for gauge in (BINDING_CONNECTIONS, BINDING_EXPECTATIONS):
        with contextlib.suppress(KeyError):  # never published: nothing to remove
            gauge.remove(router_id, helper, protocol, str(port))


# Methods as labels: anything else is "other", so a client cannot grow the label set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def normal_method(method: str) -> str:
    return method if method in _METHODS else "other"


class _Valued(Protocol):
    @property
    def value(self) -> str: ...


class SyncOutcome(Protocol):
    """What the agent's ReconcileResult tells the metrics (the agent is not imported here)."""

    @property
    def router_id(self) -> str: ...
    @property
    def action(self) -> _Valued: ...
    @property
    def retry(self) -> bool: ...
    @property
    def drift(self) -> bool: ...


class AgentTelemetry:
    """One agent's side of the metrics: when each router was first queued and not yet synced
    (for the programming duration and readiness), and the observations at each reconcile's
    end. Thread-safe: the store's notifications and every worker call it."""

    def __init__(self, backend: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}  # router id -> when first queued (monotonic)

    def queued(self, router_id: str) -> None:
        with self._lock:
            self._pending.setdefault(router_id, self._clock())
        SYNC_LAST_QUEUED.set(time.time())

    def synced(self, result: SyncOutcome, started: float) -> None:
        """A reconcile that began at `started` (monotonic) ended with `result`. A router queued
        again during it stays pending (its reconcile is still to come); one that failed and is
        retried stays pending too, from its first queuing (readiness sees it wait)."""
        now = self._clock()
        action = result.action.value
        with self._lock:
            since = self._pending.get(result.router_id)
            done = since is not None and since <= started and not result.retry
            if done:
                del self._pending[result.router_id]
        sync = getattr(result, "sync", "full")
        if sync != "none":
            SYNC_DURATION.labels(kind=str(sync)).observe(max(0.0, now - started))
        if action == "failed":
            SYNC_FAILURES.labels(backend=self._backend).inc()
            return
        SYNC_LAST.set(time.time())
        if result.drift and action == "applied":
            DRIFT_REPAIRS.inc()
        elif done and action in ("applied", "removed") and since is not None:
            PROGRAMMING_DURATION.observe(max(0.0, now - since))

    def oldest_pending(self) -> float | None:
        """Seconds the longest-waiting queued router has waited; None: nothing waits."""
        with self._lock:
            first = min(self._pending.values(), default=None)
        return None if first is None else max(0.0, self._clock() - first)

    def forget(self, router_id: str) -> None:
        with self._lock:
            self._pending.pop(router_id, None)


class Census:
    """Routers by status and bindings by (status, helper), as counted in the database."""

    def __init__(self, routers: Mapping[str, int], bindings: Mapping[tuple[str, str], int]) -> None:
        self.routers = dict(routers)
        self.bindings = dict(bindings)


class _ScrapeTime(Collector):
    def __init__(self, census: Census | None, queue_depth: int | None) -> None:
        self._census = census
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._census is not None:
            routers = GaugeMetricFamily("cthm_routers", "Routers by status.", labels=["status"])
            # Every status, 0 included: a dashboard's ERROR panel reads 0, not "no data".
            counts = {status.value: 0 for status in Status} | self._census.routers
            for status, count in sorted(counts.items()):
                routers.add_metric([status], count)
            yield routers
            bindings = GaugeMetricFamily(
                "cthm_bindings",
                "Conntrack helper bindings by status and helper.",
                labels=["status", "helper"],
            )
            for (status, helper), count in sorted(self._census.bindings.items()):
                bindings.add_metric([status, helper], count)
            yield bindings
        if self._queue_depth is not None:
            yield GaugeMetricFamily(
                "cthm_agent_queue_depth",
                "Routers waiting in the agent's queue.",
                value=self._queue_depth,
            )


def exposition(census: Census | None = None, queue_depth: int | None = None) -> bytes:
    """The text a scrape gets: this process's metrics, then the ones taken now (the census
    from the database, the queue depth of the agent in this process; None: not shown)."""
    now = CollectorRegistry(auto_describe=False)
    now.register(_ScrapeTime(census, queue_depth))
    return generate_latest(REGISTRY) + generate_latest(now)
