"""cthm's L3 agent extension driven as Neutron's L3 agent drives it (cthm.testing.neutron's
harness: Neutron's RouterInfo, L3AgentExtensionAPI, ConntrackHelper objects and push/pull RPC
code; only oslo.messaging's transport is the in-process fake), read back from the kernel of
the router's namespace. Both of cthm's backends; and the harness itself, with Neutron's own
extension too."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from neutron_kernel import active, both, ipv4

from cthm.testing import netns_exists

pytest.importorskip("neutron")

if TYPE_CHECKING:
    from cthm.testing.neutron import L3AgentHarness

FTP = ("tcp", 21, "ftp")
TFTP = ("udp", 69, "tftp")

Make = Callable[..., "L3AgentHarness"]


@pytest.fixture(params=["nftables", "iptables"])
def agent(
    request: pytest.FixtureRequest, cthm_extension_class: type, neutron_harness: Make
) -> L3AgentHarness:
    return neutron_harness(cthm_extension_class, backend=request.param)


def test_pushed_create_update_delete_reach_the_kernel(agent: L3AgentHarness) -> None:
    info = agent.add_router()
    router_id, ns = info.router_id, info.ns_name
    assert active(ns) == set()
    ftp, tftp = agent.helper(router_id, *FTP), agent.helper(router_id, *TFTP)
    agent.push("created", [ftp, tftp])
    assert active(ns) == both(FTP, TFTP)
    agent.push("updated", [agent.helper(router_id, "tcp", 2121, "ftp", id=ftp.id)])
    assert active(ns) == both(("tcp", 2121, "ftp"), TFTP)
    agent.push("deleted", [tftp])
    assert active(ns) == both(("tcp", 2121, "ftp"))


def test_add_router_applies_what_the_server_holds_and_writes_its_state(
    agent: L3AgentHarness,
) -> None:
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [agent.helper(router_id, *FTP)]
    info = agent.add_router(router_id)
    assert agent.server.pulls == 1  # through ResourcesPullRpcApi.bulk_pull, over RPC
    assert active(info.ns_name) == both(FTP)
    state_file = agent.state_path / "cthm" / f"{router_id}.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    assert state["status"] == "ACTIVE"
    assert state["namespace"] == info.ns_name
    agent.delete_router(router_id)
    assert not state_file.exists()
    assert not netns_exists(info.ns_name)


def test_an_unknown_helper_is_refused_and_the_others_applied(agent: L3AgentHarness) -> None:
    info = agent.add_router()
    bogus = agent.helper(info.router_id, "tcp", 4000, "no-such-helper")
    agent.push("created", [bogus, agent.helper(info.router_id, *FTP)])
    assert active(info.ns_name) == both(FTP)


def test_ha_state_change_and_update_network_are_accepted(agent: L3AgentHarness) -> None:
    info = agent.add_router()
    agent.push("created", [agent.helper(info.router_id, *FTP)])
    agent.ha_state_change(info.router_id, "backup")
    agent.extension.update_network(agent.context, {"id": str(uuid.uuid4())})
    assert netns_exists(info.ns_name)
    assert active(info.ns_name) == both(FTP)


def test_a_distributed_router_on_a_dvr_snat_agent_is_written_to_its_snat_namespace(
    cthm_extension_class: type, neutron_harness: Make
) -> None:
    agent = neutron_harness(cthm_extension_class, agent_mode="dvr_snat")
    info = agent.add_router(distributed=True)
    snat = info.snat_namespace.name
    assert snat == f"snat-{info.router_id}"
    assert netns_exists(snat)
    agent.push("created", [agent.helper(info.router_id, *FTP)])
    assert active(snat) == both(FTP)
    assert active(info.ns_name) == set()
    agent.delete_router(info.router_id)
    assert not netns_exists(snat)


def test_a_distributed_router_on_a_dvr_compute_agent_gets_nothing(
    cthm_extension_class: type, neutron_harness: Make
) -> None:
    agent = neutron_harness(cthm_extension_class, agent_mode="dvr")
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [agent.helper(router_id, *FTP)]
    info = agent.add_router(router_id, distributed=True)
    agent.push("created", [agent.helper(router_id, *TFTP)])
    agent.update_router(router_id)
    assert active(info.ns_name) == set()
    assert not netns_exists(f"snat-{router_id}")
    agent.delete_router(router_id)


# -- the harness ---------------------------------------------------------------------------


def test_the_harness_drives_neutrons_own_extension(
    neutron_extension_class: type, neutron_harness: Make
) -> None:
    agent = neutron_harness(neutron_extension_class)
    router_id = str(uuid.uuid4())
    agent.server.helpers[router_id] = [agent.helper(router_id, *FTP)]
    info = agent.add_router(router_id)
    assert agent.server.pulls == 1
    assert ipv4(info.ns_name) == {FTP}
    agent.push("created", [agent.helper(router_id, *TFTP)])
    assert ipv4(info.ns_name) == {FTP, TFTP}


def test_close_leaves_no_namespace_consumer_or_thread(
    cthm_extension_class: type, neutron_extension_class: type, neutron_harness: Make
) -> None:
    from neutron.api.rpc.callbacks import resource_manager, resources

    threads = set(threading.enumerate())
    manager = resource_manager.ConsumerResourceCallbacksManager()
    for extension_class in (cthm_extension_class, neutron_extension_class):
        agent = neutron_harness(extension_class)
        info = agent.add_router()
        kept = agent.add_router()
        agent.delete_router(kept.router_id, delete_namespace=False)
        assert set(agent.namespaces()) == {info.ns_name, kept.ns_name}
        agent.close()
        assert agent.namespaces() == []
        assert not netns_exists(info.ns_name)
        assert not netns_exists(kept.ns_name)
        assert not manager._callbacks.get(resources.CONNTRACKHELPER)
        left = [t for t in set(threading.enumerate()) - threads if t.is_alive()]
        assert not left, f"{extension_class.__name__}: threads left {left}"
