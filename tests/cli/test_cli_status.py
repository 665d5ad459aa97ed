"""`cthm status ROUTER`: desired state from the API beside the kernel's table, read now, and the
server's agent view (GET .../kernel_state: last verification, last error, drift repairs)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from cthm_cli_harness import Result

from cthm.testing import NamespaceFactory

pytestmark = pytest.mark.kernel


def status_json(result: Result) -> dict[str, Any]:
    """`cthm --json status`'s report; its exit status is 0 only when all is in sync (1 else)."""
    assert result.returncode in (0, 1), result
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def wait_report(
    cthm: Callable[..., Result], router: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = status_json(cthm("--json", "status", router))
        if done(report):
            return report
        time.sleep(0.05)
    return report


def wait_in_sync(cthm: Callable[..., Result], router: str) -> dict[str, Any]:
    return wait_report(
        cthm, router, lambda r: bool(r["in_sync"] and r["agent"] and r["agent"]["in_sync"])
    )


def test_status_shows_desired_beside_kernel_and_reveals_drift(
    cthm: Callable[..., Result], netns: NamespaceFactory, project: str
) -> None:
    namespace = netns.create("st")
    for args in (
        ("router", "create", "st-router", "--project", project, "--namespace", namespace),
        ("helper", "create", "st-router", "--protocol", "tcp", "--port", "21", "--helper", "ftp"),
        (
            "helper",
            "create",
            "st-router",
            "--protocol",
            "udp",
            "--port",
            "1719",
            "--helper",
            "h323",
        ),
    ):
        assert cthm(*args).returncode == 0

    report = wait_in_sync(cthm, "st-router")
    assert report["in_sync"] is True, report
    assert report["source"] == "local"
    agent = report["agent"]
    assert agent["in_sync"] is True
    assert agent["verified_at"] is not None
    assert agent["last_error"] is None
    assert agent["drift_repairs"] == 0
    assert {(a["port"], a["helper"], a["kernel_helper"]) for a in agent["actual"]} == {
        (21, "ftp", "ftp"),
        (1719, "h323", "RAS"),
    }
    rows = {(r["protocol"], r["port"]): r for r in report["bindings"]}
    assert rows[("tcp", 21)]["kernel"] == "ftp"
    assert rows[("udp", 1719)]["desired"] == "h323"
    assert rows[("udp", 1719)]["kernel"] == "RAS"

    table = cthm("status", "st-router")
    assert table.returncode == 0, table
    assert "kernel in sync" in table.stdout
    assert "RAS" in table.stdout
    assert "last verified 20" in table.stdout

    # Someone empties our table behind cthm's back: status tells the truth at once.
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "flush", "table", "inet", "cthm"],
        check=True,
        timeout=10,
    )
    result = cthm("--json", "status", "st-router")
    assert result.returncode == 1, result  # a monitoring check: out of sync fails
    drifted = json.loads(result.stdout)
    assert drifted["in_sync"] is False
    assert all(r["kernel"] is None for r in drifted["bindings"])
    table = cthm("status", "st-router")
    assert "DIFFERS" in table.stdout
    assert table.returncode == 1


def test_status_of_a_router_whose_namespace_is_missing(
    cthm: Callable[..., Result], project: str
) -> None:
    created = cthm(
        "router", "create", "ghost", "--project", project, "--namespace", "cthm-nowhere-x1"
    )
    assert created.returncode == 0, created
    result = cthm("--json", "status", "ghost")
    assert result.returncode == 1, result
    report = json.loads(result.stdout)
    assert report["in_sync"] is False
    assert report["kernel_error"] == "namespace cthm-nowhere-x1 not found on this host"

    # Once the server's agent has looked, its view (and its error) is shown.
    seen = wait_report(cthm, "ghost", lambda r: r["source"] == "agent")
    assert seen["source"] == "agent", seen
    assert seen["in_sync"] is False
    assert seen["agent"]["last_error"] == "namespace cthm-nowhere-x1 not found"
    assert seen["agent"]["last_error_at"] is not None
    text = cthm("status", "ghost")
    assert "as last read by the agent" in text.stdout
    assert "last error" in text.stdout


def test_status_keys_bindings_by_direction(
    cthm: Callable[..., Result], netns: NamespaceFactory, project: str
) -> None:
    namespace = netns.create("sd")
    name = f"sd-{project}"
    ftp = ("--protocol", "tcp", "--port", "21", "--helper", "ftp")
    for args in (
        ("router", "create", name, "--project", project, "--namespace", namespace),
        ("helper", "create", name, *ftp),
        ("helper", "create", name, *ftp, "--direction", "output"),
    ):
        assert cthm(*args).returncode == 0

    report = wait_in_sync(cthm, name)
    assert report["in_sync"] is True, report
    rows = {(r["protocol"], r["port"], r["direction"]): r for r in report["bindings"]}
    assert set(rows) == {("tcp", 21, "ingress"), ("tcp", 21, "output")}
    assert all(r["kernel"] == "ftp" and r["match"] for r in rows.values())
    assert {(a["port"], a["direction"]) for a in report["agent"]["actual"]} == {
        (21, "ingress"),
        (21, "output"),
    }

    table = cthm("status", name)
    assert table.returncode == 0, table
    lines = [line.split() for line in table.stdout.splitlines()]
    assert any(line[:3] == ["Protocol", "Port", "Direction"] for line in lines), table.stdout
    assert ["tcp", "21", "output", "ftp"] in [line[:4] for line in lines]
    assert ["tcp", "21", "ingress", "ftp"] in [line[:4] for line in lines]

    # Only the output rule goes: status names that row, the ingress one still matches.
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "delete", "chain", "inet", "cthm", "output"],
        check=True,
        timeout=10,
    )
    drifted = status_json(cthm("--json", "status", name))
    assert drifted["in_sync"] is False
    by_direction = {r["direction"]: r for r in drifted["bindings"]}
    assert by_direction["output"]["kernel"] is None
    assert by_direction["ingress"]["kernel"] == "ftp"
