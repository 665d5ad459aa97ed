"""cthm's L3 agent extension over a router's life (issue 15), driven through Neutron's real
RouterInfo, extension API and RPC callbacks (cthm.testing.neutron): where a distributed
router's helpers go on each kind of agent, ERROR and back in the log with the kernel's reason,
drift repaired by the periodic resync, delete_router with and without the namespace, and no
thread left after close()."""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cthm.testing import run_in_namespace

pytest.importorskip("neutron")

pytestmark = pytest.mark.kernel

Harness = Callable[..., Any]


def has_table(namespace: str) -> bool:
    done = run_in_namespace(namespace, ["nft", "list", "tables"])
    return "table inet cthm" in done.stdout


def state(agent: Any, router_id: str) -> dict[str, Any] | None:
    path = Path(agent.conf.cthm.state_path) / f"{router_id}.json"
    if not path.exists():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_distributed_router_is_written_into_its_snat_namespace_on_a_dvr_snat_agent(
    neutron_harness: Harness, cthm_extension_class: type
) -> None:
    agent = neutron_harness(cthm_extension_class, agent_mode="dvr_snat")
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [agent.helper(router_id, "tcp", 21, "ftp")]

    info = agent.add_router(router_id, distributed=True)

    assert has_table(info.snat_namespace.name)
    assert not has_table(info.ns_name)
    saved = state(agent, router_id)
    assert saved is not None
    assert saved["namespace"] == f"snat-{router_id}"
    assert saved["status"] == "ACTIVE"


def test_a_distributed_router_gets_nothing_on_a_dvr_compute_agent(
    neutron_harness: Harness, cthm_extension_class: type
) -> None:
    agent = neutron_harness(cthm_extension_class, agent_mode="dvr")
    router_id = str(uuid.uuid4())
    helper = agent.helper(router_id, "tcp", 21, "ftp")
    agent.server.helpers[router_id] = [helper]

    info = agent.add_router(router_id, distributed=True)
    agent.push("created", [agent.helper(router_id, "udp", 69, "tftp")])
    agent.update_router(router_id)

    assert not has_table(info.ns_name)
    assert state(agent, router_id) is None
    agent.delete_router(router_id)


def test_error_and_back_are_logged_with_the_kernels_reason(
    neutron_harness: Harness, cthm_extension_class: type, caplog: pytest.LogCaptureFixture
) -> None:
    agent = neutron_harness(cthm_extension_class)
    router_id = str(uuid.uuid4())
    namespace = f"qrouter-{router_id}"
    agent.server.helpers[router_id] = [agent.helper(router_id, "tcp", 21, "ftp")]
    caplog.set_level(logging.INFO, logger="cthm")

    try:
        # The L3 agent has not made the namespace yet (or it went away).
        agent.add_router(router_id, create_namespace=False)
        saved = state(agent, router_id)
        assert saved is not None
        assert saved["status"] == "ERROR"
        assert f"namespace {namespace} not found" in saved["reason"]
        went = [r for r in caplog.records if "is now ERROR" in r.getMessage()]
        assert [r.levelno for r in went] == [logging.WARNING]
        assert f"namespace {namespace} not found" in went[0].getMessage()

        subprocess.run(["ip", "netns", "add", namespace], check=True, timeout=10)
        # The agent watches for the namespace: applied as soon as it appears.
        assert wait_for(lambda: (state(agent, router_id) or {}).get("status") == "ACTIVE")
        back = [r for r in caplog.records if "is ACTIVE again" in r.getMessage()]
        assert [r.levelno for r in back] == [logging.INFO]
        assert has_table(namespace)
    finally:
        agent.delete_router(router_id, delete_namespace=False)
        subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=10)


def test_drift_is_repaired_by_the_periodic_resync(
    neutron_harness: Harness, cthm_extension_class: type
) -> None:
    agent = neutron_harness(cthm_extension_class, resync_interval=1)
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [agent.helper(router_id, "tcp", 21, "ftp")]
    info = agent.add_router(router_id)

    run_in_namespace(info.ns_name, ["nft", "delete", "table", "inet", "cthm"])

    assert wait_for(lambda: has_table(info.ns_name), timeout=10)
    assert (
        'ct helper set "ftp-tcp"'
        in run_in_namespace(info.ns_name, ["nft", "list", "ruleset"]).stdout
    )


def test_delete_router_removes_the_table_and_survives_a_missing_namespace(
    neutron_harness: Harness, cthm_extension_class: type
) -> None:
    agent = neutron_harness(cthm_extension_class)
    kept, gone = str(uuid.uuid4()), str(uuid.uuid4())
    for router_id in (kept, gone):
        agent.server.helpers[router_id] = [agent.helper(router_id, "tcp", 21, "ftp")]
    kept_info = agent.add_router(kept)
    gone_info = agent.add_router(gone)

    agent.delete_router(kept, delete_namespace=False)
    subprocess.run(["ip", "netns", "del", gone_info.ns_name], check=True, timeout=10)
    agent.delete_router(gone)

    assert not has_table(kept_info.ns_name)  # the namespace stays, cthm's table is gone
    assert state(agent, kept) is None
    assert state(agent, gone) is None


def test_close_leaves_no_thread_of_cthms(
    neutron_harness: Harness, cthm_extension_class: type
) -> None:
    agent = neutron_harness(cthm_extension_class, backend="iptables", resync_interval=1)
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [agent.helper(router_id, "tcp", 21, "ftp")]
    agent.add_router(router_id)
    assert any(t.name.startswith("cthm-") for t in threading.enumerate())

    agent.extension.close()
    agent.extension.close()  # twice: harmless

    assert [t.name for t in threading.enumerate() if t.name.startswith("cthm-")] == []
