"""`cthm serve`'s log: text or JSON lines with UTC times, an access log without secrets, a line
when a router goes to ERROR and back, and one at shutdown."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cthm_cli_harness import ServerProcess, run

from cthm.testing import NamespaceFactory

UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ACCESS = re.compile(
    r"GET /v2\.0/routers/\{router_id\} 400 \d+\.\dms req-[0-9a-f-]{36} client 127\.0\.0\.1"
)


def _wait_for(server: ServerProcess, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.stderr:
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout}s: {server.stderr[-3000:]}")


@pytest.mark.kernel
def test_json_log_lines_in_utc_with_access_log_and_router_transitions(
    tmp_path: Path, netns: NamespaceFactory
) -> None:
    args = ("--log-format", "json", "--resync-interval", "600")
    server = ServerProcess(tmp_path / "data", tmp_path / "logs", args=args)
    with server:
        token = server.admin_token
        namespace = netns.name("lg")  # made later: the router waits for it in ERROR
        created = run(
            "--json", "router", "create", "logged", "--project", "p1", "--namespace", namespace,
            url=server.url, token=token,
        ).json()["router"]  # fmt: skip
        router_id = created["id"]
        _wait_for(server, f"router {router_id} (logged, namespace {namespace}) is now ERROR")
        netns.create("lg")
        _wait_for(server, f"router {router_id} (logged, namespace {namespace}) is ACTIVE again")
        # A token in the query string (where it does not belong) and an id in the path.
        answer = httpx.get(
            f"{server.url}/v2.0/routers/{router_id}",
            params={"token": token},
            headers={"X-Auth-Token": token},
            timeout=10,
        )
        assert answer.status_code == 400  # not a query parameter of this route
        request_id = answer.headers["X-Openstack-Request-Id"]
        _wait_for(server, request_id)
    assert server.process is not None
    assert server.process.returncode == 0

    entries: list[dict[str, Any]] = []
    for line in server.stderr.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert UTC_TIME.fullmatch(entry["time"]), entry
        assert {"level", "logger", "message", "pid"} <= entry.keys(), entry
        entries.append(entry)
    access = [e for e in entries if e["logger"] == "cthm.access" and request_id in e["message"]]
    assert len(access) == 1, entries
    assert ACCESS.fullmatch(access[0]["message"].replace(request_id, "req-" + "0" * 36))
    assert access[0]["level"] == "INFO"
    assert token not in server.stderr
    assert token[5:20] not in server.stderr
    assert router_id not in access[0]["message"]  # the route, not the path
    error = next(e for e in entries if "is now ERROR" in e["message"])
    assert error["level"] == "WARNING"
    assert error["message"].endswith(f"namespace {namespace} not found")
    assert entries[-1]["message"] == "cthm serve stopped", entries[-3:]


def test_text_log_lines_carry_utc_times(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=("--no-agent",)) as server:
        listed = run("router", "list", url=server.url, token=server.admin_token)
        assert listed.returncode == 0, listed
        _wait_for(server, "GET /v2.0/routers 200 ")
    lines = server.stderr.splitlines()
    assert lines, server.stderr
    for line in lines:
        stamp, level, _rest = line.split(" ", 2)
        assert UTC_TIME.fullmatch(stamp), line
        assert level in ("DEBUG", "INFO", "WARNING", "ERROR"), line
    assert lines[-1].endswith(" INFO cthm.serve: cthm serve stopped"), lines[-3:]
    assert any(" INFO cthm.access: GET /v2.0/routers 200 " in line for line in lines)
