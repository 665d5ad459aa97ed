"""The defects of Neutron's own L3 agent extension (neutron/agent/l3/extensions/
conntrack_helper.py) that issue 15 names, one test each, run against Neutron's extension and
cthm's through the same harness (Neutron's real objects, callbacks and RouterInfo; the kernel
of real namespaces). Neutron's case is a strict xfail: it proves the defect is in Neutron's
code (the test would pass, and so fail strictly, if it were not) and absent from cthm's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from neutron_kernel import active, both, ipv4

from cthm.netfilter import TABLE_FAMILY, TABLE_NAME
from cthm.testing import run_in_namespace

pytest.importorskip("neutron")
# What Neutron's extension raises when iptables-restore fails (its defects, not a harness's).
RESTORE_FAILED = pytest.importorskip("neutron_lib.exceptions").ProcessExecutionError

if TYPE_CHECKING:
    from cthm.testing.neutron import L3AgentHarness

FTP = ("tcp", 21, "ftp")
TFTP = ("udp", 69, "tftp")
TFTP_B = ("udp", 6969, "tftp")  # both families (irc, netbios-ns, snmp: IPv4 only)


def sides(
    neutron_fails_because: str, raises: type[BaseException] = AssertionError
) -> pytest.MarkDecorator:
    """Both extensions; Neutron's expected (strictly) to fail for the reason given, by an
    assertion of the test (anything else, a harness error say, is a real failure)."""
    xfail = pytest.mark.xfail(strict=True, raises=raises, reason=neutron_fails_because)
    neutron = pytest.param("neutron", marks=xfail)
    return pytest.mark.parametrize("side", ["cthm", neutron])


@pytest.fixture
def agent(
    side: str, request: pytest.FixtureRequest, neutron_harness: Callable[..., L3AgentHarness]
) -> L3AgentHarness:
    extension_class: type = request.getfixturevalue(f"{side}_extension_class")
    return neutron_harness(extension_class)


def _router(agent: L3AgentHarness, *helpers: tuple[str, int, str]) -> tuple[str, str, list[Any]]:
    """A router added with helpers the server holds (pulled by add_router): (id, ns, objects)."""
    router_id = str(uuid.uuid4())
    held = [agent.helper(router_id, *h) for h in helpers]
    agent.server.helpers[router_id] = held
    info = agent.add_router(router_id)
    return router_id, str(info.ns_name), held


@sides("a sync of one router deletes every other router's helpers from the extension's map")
def test_a_sync_of_one_router_keeps_the_other_routers(agent: L3AgentHarness) -> None:
    a, a_ns, (a_ftp, a_tftp) = _router(agent, FTP, TFTP)
    b, b_ns, _ = _router(agent, TFTP_B)
    agent.update_router(b)
    assert ipv4(a_ns) == {FTP, TFTP}
    assert ipv4(b_ns) == {TFTP_B}
    # A's helper deleted on the server while the agent was not listening (a missed push): the
    # next sync of A must take it away, which it can only if it still knows A's helpers.
    agent.server.store("deleted", [a_tftp])
    agent.update_router(a)
    assert ipv4(a_ns) == {FTP}
    moved = agent.helper(a, "tcp", 2121, "ftp", id=a_ftp.id)
    agent.push("updated", [moved])
    assert ipv4(a_ns) == {("tcp", 2121, "ftp")}
    assert ipv4(b_ns) == {TFTP_B}


@sides("a batch stops at its first helper of a router the agent does not host (return)")
def test_a_batch_is_applied_past_a_helper_of_an_unknown_router(agent: L3AgentHarness) -> None:
    a, a_ns, _ = _router(agent)
    elsewhere = agent.helper(str(uuid.uuid4()), *FTP)  # a router of another L3 agent
    agent.push("created", [elsewhere, agent.helper(a, *FTP), agent.helper(a, *TFTP)])
    assert ipv4(a_ns) == {FTP, TFTP}


def test_an_update_of_the_port_converges(agent_any: L3AgentHarness) -> None:
    agent = agent_any
    a, a_ns, (ftp,) = _router(agent, FTP)
    for port in (2121, 2122, 2122, 21):
        agent.push("updated", [agent.helper(a, "tcp", port, "ftp", id=ftp.id)])
        assert active(a_ns) == both(("tcp", port, "ftp")), f"after the update to {port}"
    agent.update_router(a)
    assert active(a_ns) == both(FTP)


@pytest.fixture(params=["cthm", "neutron"])
def agent_any(
    request: pytest.FixtureRequest, neutron_harness: Callable[..., L3AgentHarness]
) -> L3AgentHarness:
    """Both extensions, neither expected to fail (a behaviour Neutron has right)."""
    extension_class: type = request.getfixturevalue(f"{request.param}_extension_class")
    return neutron_harness(extension_class)


@sides(
    "an IPv4-only helper is written to ip6tables too: the restore fails, and the batch",
    raises=RESTORE_FAILED,
)
def test_an_ipv4_only_helper_is_applied_for_ipv4_alone(agent: L3AgentHarness) -> None:
    a, a_ns, _ = _router(agent)
    netbios = ("udp", 137, "netbios-ns")
    agent.push("created", [agent.helper(a, *netbios), agent.helper(a, *FTP)])
    assert active(a_ns) == both(FTP) | {("ipv4", *netbios)}


def _delete_by_hand(namespace: str) -> None:
    """An operator's (or another tool's) hand: every helper rule in the namespace goes."""
    run_in_namespace(namespace, ["nft", "delete", "table", TABLE_FAMILY, TABLE_NAME], check=False)
    for tool in ("iptables", "ip6tables"):
        saved = run_in_namespace(namespace, [f"{tool}-save", "-t", "raw"]).stdout
        for line in saved.splitlines():
            if line.startswith("-A ") and "-j CT --helper" in line:
                run_in_namespace(namespace, [tool, "-t", "raw", "-D", *line.split()[1:]])


@sides("nothing reads the kernel back: a sync with unchanged helpers writes nothing")
def test_drift_is_repaired_by_a_sync_of_the_router(agent: L3AgentHarness) -> None:
    a, a_ns, _ = _router(agent, FTP)
    _delete_by_hand(a_ns)
    assert active(a_ns) == set()
    agent.update_router(a)
    assert active(a_ns) == both(FTP)


@sides("there is no periodic resync: a rule deleted by hand stays deleted")
def test_drift_is_repaired_by_the_periodic_resync(
    side: str, request: pytest.FixtureRequest, neutron_harness: Callable[..., L3AgentHarness]
) -> None:
    extension_class: type = request.getfixturevalue(f"{side}_extension_class")
    agent = neutron_harness(extension_class, resync_interval=1)
    _a, a_ns, _ = _router(agent, FTP)
    _delete_by_hand(a_ns)
    deadline = time.monotonic() + 6
    while active(a_ns) != both(FTP) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert active(a_ns) == both(FTP), "not restored within 6 s (resync_interval 1 s)"


@sides("delete_router only forgets the router: its rules stay in the namespace")
def test_delete_router_removes_its_rules_from_a_namespace_that_stays(
    agent: L3AgentHarness,
) -> None:
    a, a_ns, _ = _router(agent, FTP, TFTP)
    assert ipv4(a_ns) == {FTP, TFTP}
    agent.delete_router(a, delete_namespace=False)
    assert active(a_ns) == set()
