"""Day-to-day commands against a real `cthm serve` (its embedded agent, real namespaces):
`cthm router resync`, `cthm helper create --wait`, bindings by id prefix or protocol/port,
and the client's local checks (token, URL, protocol case, the role a 403 needs)."""

from __future__ import annotations

import functools
import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cthm_cli_harness import CTHM, Result, ServerProcess, assert_error, clean_env, free_port, run

from cthm.testing import NamespaceFactory

Cthm = Callable[..., Result]
FTP = ("--protocol", "tcp", "--port", "21", "--helper", "ftp")


def _report(cthm: Cthm, router: str) -> dict[str, Any]:
    result = cthm("--json", "status", router)
    assert result.returncode in (0, 1), result
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _wait_agent_in_sync(cthm: Cthm, router: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = _report(cthm, router)
        agent = report.get("agent") or {}
        if report["in_sync"] and agent.get("in_sync") and not agent.get("missing"):
            return report
        time.sleep(0.1)
    raise AssertionError(f"not in sync within {timeout}s: {report}")


def _router(cthm: Cthm, name: str, project: str, namespace: str) -> dict[str, Any]:
    created = cthm(
        "router", "create", name, "--project", project, "--namespace", namespace, "--json"
    )
    body: dict[str, Any] = created.json()["router"]
    return body


# --- cthm router resync ----------------------------------------------------------------------


@pytest.mark.kernel
def test_router_resync_repairs_a_table_emptied_behind_cthms_back(
    cthm: Cthm, netns: NamespaceFactory, project: str
) -> None:
    namespace = netns.create("rs")
    name = f"rs-{project}"
    router = _router(cthm, name, project, namespace)
    assert cthm("helper", "create", name, *FTP).returncode == 0
    _wait_agent_in_sync(cthm, name)

    # Nothing desired changes, so no event reaches the agent: without a resync the emptied
    # table stays empty until the periodic resync (60 s by default).
    flushed = ["ip", "netns", "exec", namespace, "nft", "flush", "table", "inet", "cthm"]
    subprocess.run(flushed, check=True, timeout=10)
    assert _report(cthm, name)["in_sync"] is False

    result = cthm("router", "resync", name)
    assert result.returncode == 0, result
    assert f"Resync of router {name} ({router['id']}) requested" in result.stdout
    repaired = _wait_agent_in_sync(cthm, name)
    assert {(b["port"], b["kernel"]) for b in repaired["bindings"]} == {(21, "ftp")}

    answer = cthm("router", "resync", router["id"], "--json").json()["resync"]
    assert answer == {"router_id": router["id"], "namespace": namespace, "agent": "local"}
    events = cthm(
        "--json", "audit", "list", "--action", "resync_router", "--target-id", router["id"]
    ).json()["audit_events"]
    assert [(e["outcome"], e["status_code"]) for e in events] == [("success", 202)] * 2


def test_router_resync_is_for_members_and_names_the_role_a_reader_lacks(
    cthm: Cthm, server: ServerProcess, project: str
) -> None:
    name = f"rr-{project}"
    _router(cthm, name, project, f"cthm-rr-{project}")
    reader = cthm("--json", "token", "create", "--project", project, "--role", "reader").json()
    member = cthm("--json", "token", "create", "--project", project, "--role", "member").json()

    refused = run("router", "resync", name, url=server.url, token=reader["auth_token"]["token"])
    assert_error(
        refused,
        1,
        "rule:resync_router is disallowed by policy",
        "needs: admin, or member of the project",
    )
    allowed = run("router", "resync", name, url=server.url, token=member["auth_token"]["token"])
    assert allowed.returncode == 0, allowed
    assert_error(cthm("router", "resync", "no-such-router"), 1, "no-such-router")


# --- cthm helper create --wait -----------------------------------------------------------------


@pytest.mark.kernel
def test_create_wait_returns_once_the_kernel_has_it(
    cthm: Cthm, netns: NamespaceFactory, project: str
) -> None:
    namespace = netns.create("wt")
    name = f"wt-{project}"
    _router(cthm, name, project, namespace)
    created = cthm("helper", "create", name, *FTP, "--wait", "--json")
    binding = created.json()["conntrack_helper"]
    assert binding["status"] == "ACTIVE", binding
    report = _report(cthm, name)
    assert {(b["port"], b["kernel"]) for b in report["bindings"]} == {(21, "ftp")}


def test_create_wait_fails_with_the_reason_when_the_binding_is_in_error(
    cthm: Cthm, project: str
) -> None:
    name = f"we-{project}"
    _router(cthm, name, project, f"cthm-absent-{project}")
    result = cthm("helper", "create", name, *FTP, "--wait", "--wait-timeout", "20")
    assert result.returncode == 1, result
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: conntrack helper "), line
    assert f"of router {name} (" in line, line
    assert "is in ERROR: " in line, line
    assert "not found" in line, line  # the agent's reason: the namespace is missing
    assert "ERROR" in result.stdout  # the binding is shown too


def test_create_wait_times_out_with_its_own_exit_status(tmp_path: Path) -> None:
    # No agent anywhere: the binding stays PENDING.
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=("--no-agent",)) as server:
        cthm = functools.partial(run, url=server.url, token=server.admin_token)
        assert cthm("router", "create", "wo", "--project", "p1").returncode == 0
        result = cthm("helper", "create", "wo", *FTP, "--wait", "--wait-timeout", "0.5")
        assert_error(result, 4, "is still PENDING after 0.5s", "of router wo (")
        listed = cthm("helper", "list", "wo", "--json").json()["conntrack_helpers"]
        assert [b["status"] for b in listed] == ["PENDING"]  # created all the same


# --- bindings by id prefix or PROTOCOL/PORT[/DIRECTION] ------------------------------------------


def test_bindings_are_named_by_id_prefix_or_protocol_and_port(
    cthm: Cthm, server: ServerProcess, project: str
) -> None:
    name = f"bp-{project}"
    router = _router(cthm, name, project, f"cthm-bp-{project}")
    ingress = cthm("helper", "create", name, "--protocol", "TCP", "--port", "21",
                   "--helper", "ftp", "--json").json()["conntrack_helper"]  # fmt: skip
    assert ingress["protocol"] == "tcp"  # protocol names in any case
    output = cthm("helper", "create", name, *FTP, "--direction", "output", "--json").json()
    output = output["conntrack_helper"]

    shown = cthm("helper", "show", name, "tcp/21/output", "--json").json()["conntrack_helper"]
    assert shown["id"] == output["id"]
    shown = cthm("helper", "show", name, "TCP/21/Ingress", "--json").json()["conntrack_helper"]
    assert shown["id"] == ingress["id"]
    by_prefix = cthm("helper", "show", name, ingress["id"][:8], "--json").json()
    assert by_prefix["conntrack_helper"]["id"] == ingress["id"]

    ambiguous = assert_error(cthm("helper", "show", name, "tcp/21"), 1, "2 conntrack helpers")
    assert ingress["id"] in ambiguous
    assert output["id"] in ambiguous
    assert f"router {name} ({router['id']})" in ambiguous
    missing = assert_error(cthm("helper", "delete", name, "udp/69"), 1, "udp/69")
    assert f"router {name} ({router['id']}) has no conntrack helper" in missing

    moved = cthm("helper", "update", name, "tcp/21/output", "--port", "2121", "--json").json()
    assert moved["conntrack_helper"]["id"] == output["id"]
    assert cthm("helper", "delete", name, "tcp/2121").returncode == 0
    assert cthm("helper", "delete", name, ingress["id"][:6]).returncode == 0
    assert cthm("helper", "list", name, "--json").json() == {"conntrack_helpers": []}
    gone = assert_error(cthm("helper", "delete", name, ingress["id"]), 1, ingress["id"])
    assert f"router {name} (" in gone

    # A prefix two ids share: 17 bindings, 16 hexadecimal first digits.
    headers = {"X-Auth-Token": server.admin_token}
    url = f"{server.url}/v2.0/routers/{router['id']}/conntrack_helpers"
    ids = []
    for port in range(3000, 3017):
        body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
        response = httpx.post(url, json=body, headers=headers, timeout=10)
        assert response.status_code == 201, response.text
        ids.append(response.json()["conntrack_helper"]["id"])
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    line = assert_error(cthm("helper", "show", name, shared), 1, "conntrack helpers of router")
    assert f"whose id starts with '{shared}'" in line


# --- the client's local checks -------------------------------------------------------------------


def test_no_token_says_where_it_looked_and_sends_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    # Nothing listens on this port: a request sent would end in exit 3 (unreachable).
    nowhere = f"http://127.0.0.1:{free_port()}"
    empty = tmp_path / "data"
    result = run("router", "list", url=nowhere, env={"CTHM_DATA_DIR": str(empty)})
    assert_error(
        result, 2, f"{empty}/admin.token not found; set CTHM_DATA_DIR, --data-dir or --token"
    )
    result = run("--data-dir", str(tmp_path / "other"), "router", "list", url=nowhere)
    assert_error(result, 2, f"{tmp_path}/other/admin.token not found")
    remote = run("router", "list", url="http://198.18.0.1:9")
    assert_error(remote, 2, "no token: set --token or CTHM_TOKEN")

    # The server's data directory holds its admin token: --data-dir is enough.
    listed = run("--data-dir", str(server.data_dir), "--json", "router", "list", url=server.url)
    assert listed.returncode == 0, listed
    assert "routers" in listed.json()


def test_url_may_end_in_the_api_version(server: ServerProcess) -> None:
    for url in (f"{server.url}/v2.0", f"{server.url}/v2.0/"):
        listed = run("--json", "router", "list", url=url, token=server.admin_token)
        assert listed.returncode == 0, listed
        assert "routers" in listed.json()


def test_shell_completion_offers_router_names(cthm: Cthm, server: ServerProcess) -> None:
    name = f"cmpl-{uuid.uuid4().hex[:8]}"
    cthm("router", "create", name, "--project", "p-completion")
    env = clean_env(
        CTHM_URL=server.url,
        CTHM_TOKEN=server.admin_token,
        _CTHM_COMPLETE="bash_complete",
        COMP_WORDS=f"cthm router show {name[:7]}",
        COMP_CWORD="3",
    )
    done = subprocess.run(
        [str(CTHM)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done
    assert f"plain,{name}" in done.stdout.splitlines(), done.stdout
