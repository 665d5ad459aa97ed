"""`cthm status ROUTER`: desired state from the API beside the kernel's table, read now."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import pytest
from cthm_cli_harness import Result

from cthm.testing import NamespaceFactory

pytestmark = pytest.mark.kernel


def wait_in_sync(cthm: Callable[..., Result], router: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    report: dict[str, object] = {}
    while time.monotonic() < deadline:
        report = cthm("--json", "status", router).json()
        if report["in_sync"]:
            return report
        time.sleep(0.05)
    return report


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
    rows = {(r["protocol"], r["port"]): r for r in report["bindings"]}  # type: ignore[attr-defined]
    assert rows[("tcp", 21)]["kernel"] == "ftp"
    assert rows[("udp", 1719)]["desired"] == "h323"
    assert rows[("udp", 1719)]["kernel"] == "RAS"

    table = cthm("status", "st-router")
    assert table.returncode == 0, table
    assert "kernel in sync" in table.stdout
    assert "RAS" in table.stdout

    # Someone empties our table behind cthm's back: status tells the truth at once.
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "flush", "table", "inet", "cthm"],
        check=True,
        timeout=10,
    )
    drifted = json.loads(cthm("--json", "status", "st-router").stdout)
    assert drifted["in_sync"] is False
    assert all(r["kernel"] is None for r in drifted["bindings"])
    assert "DIFFERS" in cthm("status", "st-router").stdout


def test_status_of_a_router_whose_namespace_is_missing(
    cthm: Callable[..., Result], project: str
) -> None:
    created = cthm(
        "router", "create", "ghost", "--project", project, "--namespace", "cthm-nowhere-x1"
    )
    assert created.returncode == 0, created
    report = cthm("--json", "status", "ghost").json()
    assert report["in_sync"] is False
    assert report["kernel_error"] == "namespace cthm-nowhere-x1 not found on this host"
