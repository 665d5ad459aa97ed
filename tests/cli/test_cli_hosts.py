"""The CLI of several hosts against a real `cthm serve --no-agent`: the API alone (no agent, routers
PENDING until a node reports them), agent tokens limited to a host, and `cthm status` printing
one block per host placing the router.

The per-host reports are sent here over HTTP, as a node agent sends them (PUT
/v2.0/hosts/{host}/agent and .../routers/{id}/status), so the views are exactly what the test
says the hosts hold; the agent that sends them for real is tested in test_cli_agent_run.py and
tests/hosts/.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from cthm_cli_harness import Result, ServerProcess, assert_error, run

Cthm = Callable[..., Result]
NOW = "2026-12-04T20:00:00Z"
FTP = {"protocol": "tcp", "port": 21, "direction": "ingress", "kernel_helper": "ftp"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("cthm-serve-api-only")
    with ServerProcess(base / "data", base / "logs", args=("--no-agent",)) as server:
        yield server


@pytest.fixture
def admin(api: ServerProcess) -> Cthm:
    return functools.partial(run, url=api.url, token=api.admin_token)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_serve_no_agent_serves_the_api_alone(api: ServerProcess, admin: Cthm) -> None:
    assert api.stdout.splitlines()[-1] == (
        f"cthm listening on {api.url} (data in {api.data_dir}; no agent here: node agents "
        "(cthm agent run) program the kernels)"
    )
    assert admin("--json", "agent", "list").json() == {"agents": []}

    namespace = unique("qrouter")
    router = admin(
        "--json", "router", "create", unique("r"), "--project", "p", "--namespace", namespace
    ).json()["router"]
    assert router["hosts"] == []
    time.sleep(1.0)  # an agent would have applied it by now
    shown = admin("--json", "router", "show", router["id"]).json()["router"]
    assert (shown["status"], shown["hosts"]) == ("PENDING", [])
    checked = admin("--json", "status", router["id"])
    assert checked.returncode == 1, checked  # not in sync: a monitoring check fails
    status = json.loads(checked.stdout)
    assert status["router"]["status"] == "PENDING"
    assert status["kernel_error"] == f"namespace {namespace} not found on this host"
    assert not (status["agent"] or {}).get("hosts")
    assert admin("--json", "agent", "list").json() == {"agents": []}


def test_bad_agent_down_times_exit_2(tmp_path: Any) -> None:
    for value in ("0", "-1", "soon", "90000"):
        result = run("serve", "--data-dir", str(tmp_path), "--no-agent", "--agent-down-time", value)
        assert_error(result, 2)


def test_token_create_host_limits_an_agent_token(admin: Cthm) -> None:
    project = unique("p")
    created = admin(
        "--json", "token", "create", "--project", project, "--role", "agent", "--host", "node-a"
    ).json()["auth_token"]
    assert (created["roles"], created["host"]) == (["agent"], "node-a")
    unlimited = admin("--json", "token", "create", "--project", project, "--role", "agent")
    assert unlimited.json()["auth_token"]["host"] is None

    table = admin("token", "list", "--project", project)
    assert table.returncode == 0, table
    lines = [line.split() for line in table.stdout.splitlines()]
    assert any(line[:2] == ["ID", "Project"] and "Host" in line for line in lines), table.stdout
    (row,) = [line for line in lines if line and line[0] == created["id"]]
    assert row[1:4] == [project, "agent", "node-a"]
    shown = admin("token", "show", created["id"]).stdout.splitlines()
    assert ["host", "node-a"] in [line.split() for line in shown]

    # Only an agent token has a host: said before asking.
    for roles in (("--role", "member"), ("--role", "agent", "--role", "reader")):
        refused = admin("token", "create", "--project", project, *roles, "--host", "node-a")
        assert_error(refused, 2, "--host", "only an agent token")
    # The host name is the API's to check.
    bad = admin("token", "create", "--project", project, "--role", "agent", "--host", "a/b")
    assert_error(bad, 1, "host")


class Node:
    """What a node agent sends, sent by hand: registration and per-router reports."""

    def __init__(self, api: ServerProcess, host: str) -> None:
        self.api, self.host = api, host

    def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.request(
            method,
            f"{self.api.url}/v2.0/hosts/{self.host}{path}",
            json=body,
            headers=self.api.auth_headers(),
            timeout=10.0,
        )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def register(self, namespaces: list[str]) -> dict[str, Any]:
        agent = {"started_at": NOW, "namespaces": namespaces, "configurations": {}, "kernel": []}
        return self._call("PUT", "/agent", {"agent": agent})

    def report(
        self,
        router: dict[str, Any],
        binding: dict[str, Any],
        *,
        status: str,
        reason: str = "",
        missing: tuple[dict[str, Any], ...] = (),
        last_error: str | None = None,
    ) -> None:
        kernel = {
            "router_id": router["id"],
            "namespace": router["namespace"],
            "revision_number": router["revision_number"],
            "in_sync": not missing,
            "table_present": True,
            "missing": list(missing),
            "unexpected": [],
            "garbage": [],
            "checked_at": NOW,
            "verified_at": NOW,
            "last_error": last_error,
            "last_error_at": NOW if last_error else None,
            "drift_repairs": 0,
        }
        status_body = {
            "revision_number": router["revision_number"],
            "status": status,
            "status_reason": reason,
            "conntrack_helpers": [
                {
                    "id": binding["id"],
                    "revision_number": binding["revision_number"],
                    "status": status,
                    "status_reason": reason,
                }
            ],
            "kernel": kernel,
        }
        answer = self._call("PUT", f"/routers/{router['id']}/status", {"status": status_body})
        assert answer["status"]["written"] is True, answer


def test_status_prints_one_block_per_host(api: ServerProcess, admin: Cthm) -> None:
    namespace = unique("qrouter")  # on no host of this machine: the hosts' view is all there is
    name = unique("ha")
    admin("router", "create", name, "--project", "p", "--namespace", namespace)
    ftp = ("--protocol", "tcp", "--port", "21", "--helper", "ftp")
    binding = admin("--json", "helper", "create", name, *ftp).json()["conntrack_helper"]
    router = admin("--json", "router", "show", name).json()["router"]
    a, b = Node(api, unique("node-a")), Node(api, unique("node-b"))
    for node in (a, b):
        placed = node.register([namespace])["routers"]
        assert [r["id"] for r in placed] == [router["id"]]
    assert admin("--json", "router", "show", name).json()["router"]["hosts"] == sorted(
        [a.host, b.host]
    )

    a.report(router, binding, status="ACTIVE")
    failure = "cannot apply: helper ftp is not loaded"
    b.report(router, binding, status="ERROR", reason=failure, missing=(FTP,), last_error=failure)

    checked = admin("--json", "status", name)
    assert checked.returncode == 1, checked  # host b is in ERROR
    report = json.loads(checked.stdout)
    assert report["source"] == "agent"
    assert report["in_sync"] is False
    hosts = {h["host"]: h for h in report["agent"]["hosts"]}
    assert set(hosts) == {a.host, b.host}
    assert (hosts[a.host]["status"], hosts[a.host]["in_sync"]) == ("ACTIVE", True)
    assert hosts[b.host]["status"] == "ERROR"
    assert [{k: m[k] for k in FTP} for m in hosts[b.host]["missing"]] == [FTP]
    # The binding is held only where every host holds it: not on b.
    (row,) = report["bindings"]
    assert (row["desired"], row["kernel"], row["match"]) == ("ftp", None, False)
    assert report["router"]["status"] == "ERROR"
    assert f"host {b.host}: {failure}" in report["router"]["status_reason"]

    text = admin("status", name)
    assert text.returncode == 1, text
    lines = [line.strip() for line in text.stdout.splitlines()]
    block_a = next(i for i, line in enumerate(lines) if line.startswith(f"host {a.host}:"))
    block_b = next(i for i, line in enumerate(lines) if line.startswith(f"host {b.host}:"))
    assert block_a < block_b  # by host name
    assert lines[block_a] == (
        f"host {a.host}: ACTIVE at revision {router['revision_number']}; agent alive; "
        f"kernel in sync; last verified {NOW}; drift repairs 0"
    )
    assert lines[block_b].startswith(f"host {b.host}: ERROR at revision ")
    assert "kernel DIFFERS" in lines[block_b]
    assert lines[block_b + 1 :][:3] == [
        f"reason: {failure}",
        "missing: tcp/21 ingress ftp",
        f"last error ({NOW}): {failure}",
    ]

    # Both hosts hold it: the rows say so.
    b.report(router, binding, status="ACTIVE")
    healed = admin("--json", "status", name).json()
    assert healed["in_sync"] is True
    assert [(r["kernel"], r["match"]) for r in healed["bindings"]] == [("ftp", True)]
    assert healed["router"]["status"] == "ACTIVE"
