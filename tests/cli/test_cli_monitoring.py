"""Monitoring a real `cthm serve` (issue 16): `cthm status` of every router as a check (its exit
status), `--metrics-listen` (GET /metrics without a token), and /readyz."""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cthm_cli_harness import Result, ServerProcess, assert_error, free_port, run, serving
from prometheus_client.parser import text_string_to_metric_families

from cthm.testing import NamespaceFactory

pytestmark = pytest.mark.kernel
SETTLE_TIMEOUT = 15.0


class Monitored:
    def __init__(self, process: ServerProcess, metrics_port: int) -> None:
        self.process = process
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.cthm: Callable[..., Result] = functools.partial(
            run, url=process.url, token=process.admin_token
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    base = tmp_path_factory.mktemp("cthm-monitoring")
    port = free_port()
    process = ServerProcess(base / "data", base / "logs", args=("--metrics-listen", str(port)))
    with serving(process) as started:
        yield Monitored(started, port)


def status_of_all(server: Monitored, *args: str) -> tuple[int, dict[str, Any]]:
    result = server.cthm("--json", "status", *args)
    assert result.returncode in (0, 1), result
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def wait_all(server: Monitored, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    _, report = status_of_all(server)
    while not done(report) and time.monotonic() < deadline:
        time.sleep(0.1)
        _, report = status_of_all(server)
    return report


def test_status_of_every_router_is_a_check(server: Monitored, netns: NamespaceFactory) -> None:
    cthm = server.cthm
    namespace = netns.create("mon")
    for args in (
        ("router", "create", "mon-ok", "--project", "p1", "--namespace", namespace),
        ("helper", "create", "mon-ok", "--protocol", "tcp", "--port", "21", "--helper", "ftp"),
    ):
        assert cthm(*args).returncode == 0
    report = wait_all(server, lambda r: bool(r["routers"]) and r["in_sync"])
    code, report = status_of_all(server)
    assert code == 0, report
    (row,) = report["routers"]
    assert row["name"] == "mon-ok"
    assert row["status"] == "ACTIVE"
    assert row["in_sync"] is True
    assert row["verified_at"] is not None
    assert row["hosts"] == [socket.gethostname()]
    table = cthm("status")
    assert table.returncode == 0, table
    assert "mon-ok" in table.stdout
    assert "1 routers, all in sync" in table.stdout

    # A router whose namespace does not exist goes to ERROR: the check fails.
    created = cthm(
        "router", "create", "mon-bad", "--project", "p1", "--namespace", "cthm-nowhere-m"
    )
    assert created.returncode == 0, created
    wait_all(server, lambda r: any(x["status"] == "ERROR" for x in r["routers"]))
    code, report = status_of_all(server)
    assert code == 1, report
    assert report["in_sync"] is False
    code, errors = status_of_all(server, "--status", "error")  # any case
    assert code == 1
    (bad,) = errors["routers"]
    assert (bad["name"], bad["status"]) == ("mon-bad", "ERROR")
    assert "cthm-nowhere-m" in bad["reason"]
    code, active = status_of_all(server, "--status", "ACTIVE")
    assert code == 0, active  # only the routers shown count
    assert [r["name"] for r in active["routers"]] == ["mon-ok"]
    text = cthm("status")
    assert text.returncode == 1
    assert "mon-bad" in text.stdout
    assert "ERROR" in text.stdout
    assert "2 routers, 1 not in sync" in text.stdout
    # The one-router form follows the same rule.
    assert cthm("status", "mon-bad").returncode == 1
    assert cthm("status", "mon-ok").returncode == 0
    assert_error(cthm("status", "mon-ok", "--status", "ERROR"), 2, "--status")


def test_metrics_listen_and_readyz(server: Monitored) -> None:
    response = httpx.get(server.metrics_url, timeout=5)  # no token
    assert response.status_code == 200, response.text
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "cthm_agent_sync_duration_seconds",
        "cthm_agent_programming_duration_seconds",
        "cthm_agent_sync_failures",
        "cthm_agent_drift_repairs",
        "cthm_agent_queue_depth",
        "cthm_routers",
        "cthm_bindings",
        "cthm_api_requests",
        "cthm_api_request_duration_seconds",
        "cthm_auth_failures",
    } <= names
    # On the API's address /metrics still needs a token.
    assert httpx.get(f"{server.process.url}/metrics", timeout=5).status_code == 401
    ready = httpx.get(f"{server.process.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert {name for name, check in ready.json()["checks"].items() if check["ok"]} == {
        "database",
        "agent",
        "queue",
    }


def test_metrics_listen_is_refused_with_several_workers_and_when_bad(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    several = run(
        "serve", "--data-dir", data, "--no-agent", "--workers", "2", "--metrics-listen", "9"
    )
    assert_error(several, 2, "--metrics-listen")
    assert_error(
        run("serve", "--data-dir", data, "--metrics-listen", "nowhere:9"), 2, "metrics_listen"
    )
