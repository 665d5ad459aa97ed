"""Monitoring a real `cthm serve` (issue 16): `cthm status` of every router as a check (its exit
status), `--metrics-listen` (GET /metrics without a token), and /readyz."""

from __future__ import annotations

import functools
import json
import select
import socket
import subprocess
import sys
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


BULK = "/v2.0/routers/kernel_states"
SINGLE = "/v2.0/routers/{router_id}/kernel_state"


def route_requests(server: Monitored) -> dict[str, float]:
    """GET requests answered so far, by route template (from the server's own metrics)."""
    text = httpx.get(server.metrics_url, timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "cthm_api_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["method"] == "GET":
                route = sample.labels["route"]
                counts[route] = counts.get(route, 0) + sample.value
    return counts


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
    before = route_requests(server)
    table = cthm("status")
    assert table.returncode == 0, table
    after = route_requests(server)
    # One request for the whole table, and no per-router kernel_state (no conntrack read).
    assert after[BULK] == before.get(BULK, 0) + 1
    assert after.get(SINGLE, 0) == before.get(SINGLE, 0)
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


# Held open in the namespace: one TCP connection to port 21 (its conntrack entry gets the
# helper of an output binding on tcp/21), until stdin closes.
HOLD_TCP_21 = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 21))
server.listen()
client = socket.create_connection(("127.0.0.1", 21), timeout=5)
peer, _ = server.accept()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes the test starts, ended by their pid whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


def test_status_of_a_router_shows_live_usage_per_binding(
    server: Monitored, netns: NamespaceFactory, held: list[subprocess.Popen[str]]
) -> None:
    cthm = server.cthm
    namespace = netns.create("monuse")
    assert cthm("router", "create", "mon-use", "--project", "p1", "--namespace", namespace)
    for args in (("tcp", "21", "ftp"), ("udp", "69", "tftp")):
        protocol, port, helper = args
        created = cthm(
            "helper", "create", "mon-use", "--protocol", protocol, "--port", port,
            "--helper", helper, "--direction", "output", "--wait",
        )  # fmt: skip
        assert created.returncode == 0, created
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", HOLD_TCP_21],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    held.append(process)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 15)
    assert ready
    assert process.stdout.readline().strip() == "ready"

    result = cthm("--json", "status", "mon-use")
    assert result.returncode == 0, result
    report = json.loads(result.stdout)
    assert report["usage_error"] is None
    assert {row["port"]: row["usage"] for row in report["bindings"]} == {
        21: {"connections": 1, "expectations": 0},
        69: {"connections": 0, "expectations": 0},
    }
    table = cthm("status", "mon-use")
    assert "In use" in table.stdout
    assert "1/0" in table.stdout
    assert "0/0" in table.stdout
