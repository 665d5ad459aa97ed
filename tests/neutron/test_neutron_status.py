"""`cthm status --neutron ROUTER` (issue 15): the state file cthm's L3 agent extension writes
after every reconcile, beside the router's kernel table read now, run as the operator runs it
(the `cthm` console script). Exit 0: ACTIVE and in sync; 1: the table deleted by hand (or any
other disagreement); 2: a router this host has no state for, with a message."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cthm.testing import run_in_namespace
from cthm.testing.service import CTHM

pytest.importorskip("neutron")

pytestmark = pytest.mark.kernel


def cthm_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTHM), "status", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def hosted(
    neutron_harness: Callable[..., Any], cthm_extension_class: type
) -> tuple[Any, str, Path]:
    """An agent with cthm's extension hosting a router with two helpers (one refused): the
    harness, the router id and the extension's state path."""
    agent = neutron_harness(cthm_extension_class)
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [
        agent.helper(router_id, "tcp", 21, "ftp"),
        agent.helper(router_id, "udp", 6667, "irc"),  # refused: irc is tcp only
    ]
    agent.add_router(router_id)
    return agent, router_id, Path(agent.conf.cthm.state_path)


def test_active_and_in_sync_exits_0(hosted: tuple[Any, str, Path]) -> None:
    _agent, router_id, state_path = hosted

    done = cthm_status("--neutron", router_id, "--state-path", str(state_path), "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["status"] == "ACTIVE"
    assert report["in_sync"] is True
    assert report["namespace"] == f"qrouter-{router_id}"
    assert report["backend"] == "nftables"
    assert report["verified_at"]
    assert report["kernel"]["actual"] == [
        {"protocol": "tcp", "port": 21, "helper": "ftp", "direction": "ingress"}
    ]
    helpers = {h["helper"]: h for h in report["helpers"]}
    assert helpers["ftp"]["status"] == "ACTIVE"
    assert helpers["irc"]["status"] == "ERROR"
    assert "irc" in helpers["irc"]["reason"]

    human = cthm_status("--neutron", router_id, "--state-path", str(state_path))
    assert human.returncode == 0, human.stderr
    assert "kernel now: in sync" in human.stdout
    assert "tcp/21 ftp  ACTIVE" in human.stdout


def test_table_deleted_by_hand_exits_1(hosted: tuple[Any, str, Path]) -> None:
    _agent, router_id, state_path = hosted
    run_in_namespace(f"qrouter-{router_id}", ["nft", "delete", "table", "inet", "cthm"])

    done = cthm_status("--neutron", router_id, "--state-path", str(state_path))

    assert done.returncode == 1, done.stdout + done.stderr
    assert "NOT in sync: no cthm table or chains in the namespace" in done.stdout


def test_unknown_router_exits_2_with_a_message(tmp_path: Path) -> None:
    router_id = str(uuid.uuid4())

    done = cthm_status("--neutron", router_id, "--state-path", str(tmp_path))

    assert done.returncode == 2
    assert done.stderr.startswith(f"Error: router {router_id} is unknown here: no state file")
    assert "Traceback" not in done.stderr

    bad = cthm_status("--neutron", "../etc/passwd", "--state-path", str(tmp_path))
    assert bad.returncode == 2
    assert "not a valid UUID" in bad.stderr


def test_deleted_router_loses_its_state_file(hosted: tuple[Any, str, Path]) -> None:
    agent, router_id, state_path = hosted
    assert (state_path / f"{router_id}.json").exists()

    agent.delete_router(router_id)

    assert not (state_path / f"{router_id}.json").exists()
    done = cthm_status("--neutron", router_id, "--state-path", str(state_path))
    assert done.returncode == 2
