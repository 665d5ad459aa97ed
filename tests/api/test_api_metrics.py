"""GET /metrics and GET /readyz (issue 16, monitoring): over a plain API on a real store, and over
the app of a real Service (what `cthm serve` runs: a real agent on a real kernel backend, in a
namespace this test creates)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cthm import metrics
from cthm.testing import NamespaceFactory
from cthm.testing.service import free_port
from support.databases import kind_of

from .served import Served, services
from .support import JSON, Api, ApiFactory

SETTLE_TIMEOUT = 15.0
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cthm.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape: (name, labels) -> value (parsed by prometheus_client)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` carrying at least `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= ls)


def scrape(api: Api) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


# --- a plain API (no agent) --------------------------------------------------------------------


def test_metrics_need_an_admin_token_and_count_the_refusals(api: Api) -> None:
    before = scrape(api)
    assert api.as_token(None).get("/metrics").status_code == 401
    member = api.issue_token("p1", ["member"])
    refused = api.as_token(member).get("/metrics")
    assert refused.status_code == 403, refused.text
    after = scrape(api)
    assert value(after, "cthm_auth_failures_total") == value(before, "cthm_auth_failures_total") + 1
    # Counted under the route's template; the 401 too, although it is answered before routing.
    key = {"method": "GET", "route": "/metrics"}
    assert value(after, "cthm_api_requests_total", code="401", **key) == (
        value(before, "cthm_api_requests_total", code="401", **key) + 1
    )
    assert value(after, "cthm_api_requests_total", code="403", **key) == (
        value(before, "cthm_api_requests_total", code="403", **key) + 1
    )


def test_routers_and_bindings_by_status_and_requests_by_route_template(api: Api) -> None:
    before = scrape(api)
    router = api.create_router(name="m", project_id="p1")
    api.create_helper(router["id"], "tcp", 21, "ftp")
    api.create_helper(router["id"], "tcp", 2121, "ftp")
    api.create_helper(router["id"], "udp", 69, "tftp")
    assert api.get(f"/v2.0/routers/{router['id']}").status_code == 200
    assert api.get("/v2.0/nowhere/at/all").status_code == 404

    after = scrape(api)
    # No agent: everything waits in PENDING; every status is shown, 0 included.
    assert value(after, "cthm_routers", status="PENDING") == 1
    assert value(after, "cthm_routers", status="ERROR") == 0
    assert value(after, "cthm_bindings", status="PENDING", helper="ftp") == 2
    assert value(after, "cthm_bindings", status="PENDING", helper="tftp") == 1

    def grew(code: str, method: str, route: str) -> float:
        labels = {"code": code, "method": method, "route": route}
        return value(after, "cthm_api_requests_total", **labels) - value(
            before, "cthm_api_requests_total", **labels
        )

    assert grew("201", "POST", "/v2.0/routers") == 1
    assert grew("201", "POST", "/v2.0/routers/{router_id}/conntrack_helpers") == 3
    assert grew("200", "GET", "/v2.0/routers/{router_id}") == 1
    assert grew("404", "GET", "unmatched") == 1
    routes = {dict(ls)["route"] for (n, ls) in after if n == "cthm_api_requests_total"}
    assert not any(router["id"] in route for route in routes)  # never a raw path
    assert total(after, "cthm_api_request_duration_seconds_count", route="/v2.0/routers") >= 1


def test_status_page_requests_are_counted_under_their_own_path(api: Api) -> None:
    before = scrape(api)
    assert api.get("/ui", follow_redirects=False).status_code == 307
    assert api.get("/ui/").status_code == 200  # the login page
    assert api.post("/ui/login", data={"token": "cthm_" + "W" * 43}).status_code == 401
    assert api.get("/ui/nowhere").status_code == 404
    assert api.get("/").status_code == 200  # the API's version document
    after = scrape(api)

    def grew(code: str, method: str, route: str) -> float:
        labels = {"code": code, "method": method, "route": route}
        return value(after, "cthm_api_requests_total", **labels) - value(
            before, "cthm_api_requests_total", **labels
        )

    assert grew("307", "GET", "/ui") == 1
    assert grew("200", "GET", "/ui/") == 1
    assert grew("401", "POST", "/ui/login") == 1
    assert grew("404", "GET", "unmatched") == 1
    # The page's own "/" and "/login" are never taken for the API's routes.
    assert grew("200", "GET", "/") == 1
    assert value(after, "cthm_api_requests_total", code="401", method="POST", route="/login") == 0


def test_readyz_without_an_agent_checks_the_database_only(api: Api) -> None:
    response = api.as_token(None).get("/readyz")  # no token: a probe has none
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "agent", "queue"}
    assert body["checks"]["database"] == {"ok": True, "detail": "takes writes"}
    assert body["checks"]["agent"]["detail"] == "no agent in this process"


def test_readyz_is_503_while_the_database_cannot_take_writes(
    api_factory: ApiFactory, database_url: str, tmp_path: Path
) -> None:
    if kind_of(database_url) != "sqlite":
        pytest.skip("holds SQLite's write lock from another connection")
    api = api_factory()
    path = api.store.url.removeprefix("sqlite:///")
    assert Path(path).is_file(), path
    api.allow_status(503)
    other = sqlite3.connect(path, isolation_level=None, timeout=1)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
        started = time.monotonic()
        response = api.as_token(None).get("/readyz")
        assert time.monotonic() - started < 10  # the probe's wait is bounded
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "not ready"
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["database"]["detail"].startswith("cannot take writes")
        assert api.as_token(None).get("/healthz").status_code == 200  # still alive: it reads
        other.execute("ROLLBACK")
        assert api.as_token(None).get("/readyz").status_code == 200
    finally:
        other.close()


# --- the app of a real Service (an agent on the kernel) ----------------------------------------


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    yield from services(tmp_path, Served)


def wait_status(api: Api, path: str, key: str, wanted: str) -> JSON:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    body: JSON = api.get(path).json()[key]
    while body["status"] != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
        body = api.get(path).json()[key]
    assert body["status"] == wanted, body
    return body


@pytest.mark.kernel
def test_a_change_shows_in_the_agent_sync_and_programming_metrics(
    serve: Callable[..., Served], netns: NamespaceFactory
) -> None:
    served = serve()
    api = served.api
    namespace = netns.create("mt")
    router = api.create_router(name="mt", project_id="p1", namespace=namespace)
    path = f"/v2.0/routers/{router['id']}"
    wait_status(api, path, "router", "ACTIVE")
    before = scrape(api)

    binding = api.create_helper(router["id"], "tcp", 21, "ftp")
    wait_status(api, f"{path}/conntrack_helpers/{binding['id']}", "conntrack_helper", "ACTIVE")
    after = scrape(api)

    syncs = "cthm_agent_sync_duration_seconds_count"
    assert total(after, syncs) > total(before, syncs)  # full or partial: the agent decides
    assert {dict(ls)["kind"] for (n, ls) in after if n == syncs} <= {"full", "partial"}
    programming = "cthm_agent_programming_duration_seconds_count"
    assert value(after, programming) >= value(before, programming) + 1
    assert value(after, "cthm_agent_sync_last_timestamp_seconds") >= time.time() - 60
    assert value(after, "cthm_agent_sync_last_queued_timestamp_seconds") >= time.time() - 60
    assert ("cthm_agent_queue_depth", frozenset()) in after
    assert value(after, "cthm_routers", status="ACTIVE") == 1
    assert value(after, "cthm_bindings", status="ACTIVE", helper="ftp") == 1
    created = {
        "code": "201",
        "method": "POST",
        "route": "/v2.0/routers/{router_id}/conntrack_helpers",
    }
    assert value(after, "cthm_api_requests_total", **created) >= 1


@pytest.mark.kernel
def test_readyz_follows_the_agent_and_its_queue(serve: Callable[..., Served]) -> None:
    served = serve(ready_queue_timeout=0.2)
    probe = served.api.as_token(None)
    ready = probe.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["agent"] == {"ok": True, "detail": "running"}
    agent = served.service.agent
    assert agent is not None

    served.api.allow_status(503)
    # A router queued and never synced (no worker takes it once stopped): it waits too long.
    assert agent.stop()
    agent.enqueue(["00000000-0000-4000-8000-00000000abcd"])
    time.sleep(0.3)
    response = probe.get("/readyz")
    assert response.status_code == 503, response.text
    checks = response.json()["checks"]
    assert checks["agent"] == {"ok": False, "detail": "the agent's threads are not running"}
    assert checks["queue"]["ok"] is False
    assert "for its sync" in checks["queue"]["detail"]
    assert checks["database"]["ok"] is True


@pytest.mark.kernel
def test_metrics_listen_serves_metrics_without_a_token(serve: Callable[..., Served]) -> None:
    port = free_port()
    served = serve(metrics_listen=f"127.0.0.1:{port}")
    with served.client:  # runs the app's lifespan, which starts the listener
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200, response.text
        found = samples(response.text)
        assert ("cthm_routers", frozenset({("status", "ACTIVE")})) in found
        assert httpx.get(f"http://127.0.0.1:{port}/v2.0/routers", timeout=5).status_code == 404
    with pytest.raises(httpx.TransportError):  # stopped with the application
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_the_grafana_dashboard_uses_only_metrics_cthm_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bcthm_\w+", expr)}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    text = metrics.exposition(metrics.Census({}, {}), queue_depth=0).decode()
    exposed = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, ("",))
    }
    assert used, exprs
    assert used <= exposed, used - exposed
    names = {
        "cthm_agent_sync_duration_seconds_bucket",
        "cthm_agent_programming_duration_seconds_bucket",
    }
    assert names <= used  # the issue's latencies are on it
