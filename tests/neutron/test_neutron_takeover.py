"""Migration without a gap (issue 15): when the L3 agent restarts with cthm's extension, its
first process() of a router drops Neutron's `neutron-l3-agent-cth*` chains (Neutron's
IptablesManager no longer declares them) before the extension's add_router runs. cthm's
extension therefore copies those chains into its own rules at initialize, before any router is
processed: a port is never without its helper. The router's add_router then replaces the copy
with the server's truth; a namespace whose router never comes loses the copy after
`[cthm] takeover_grace`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cthm.domain import Assignment, Direction, HelperCatalog, Protocol
from cthm.netfilter import NftablesBackend, SubprocessRunner, read_iptables
from cthm.testing import NamespaceFactory, run_in_namespace

pytest.importorskip("neutron")

from neutron_kernel import active, both, nft_rules

from cthm.neutron.migration import NeutronRules
from cthm.neutron.takeover import Takeover, candidates, neutron_assignments

pytestmark = pytest.mark.kernel

CTH = "neutron-l3-agent-cth"
Harness = Callable[..., Any]
FTP, TFTP = ("tcp", 21, "ftp"), ("udp", 69, "tftp")


class _Routers(NamespaceFactory):
    """Router namespaces named as Neutron names them (`qrouter-<id>`), made by the test so that
    they outlive the first agent; deleted by exactly those names at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def name(self, label: str) -> str:
        self.ids.append(str(uuid.uuid4()))
        return f"qrouter-{self.ids[-1]}"


@pytest.fixture
def routers() -> Iterator[Callable[[], tuple[str, str]]]:
    """make() -> (router id, its namespace)."""
    factory = _Routers()

    def make() -> tuple[str, str]:
        namespace = factory.create("router")
        return factory.ids[-1], namespace

    try:
        yield make
    finally:
        assert factory.cleanup() == []


def neutron_chains(namespace: str) -> set[str]:
    found = set()
    for tool in ("iptables-save", "ip6tables-save"):
        text = run_in_namespace(namespace, [tool, "-t", "raw"]).stdout
        found |= {line.split()[0][1:] for line in text.splitlines() if line.startswith(f":{CTH}")}
    return found


def run_by_neutron(
    make: Harness, extension_class: type, routers: dict[str, list[tuple[str, int, str]]]
) -> dict[str, list[Any]]:
    """The routers on an L3 agent with Neutron's own extension, which then stops (namespaces
    and Neutron's chains stay). Returns the helper objects by router (the server's database)."""
    agent = make(extension_class)
    objects = {}
    for router_id, helpers in routers.items():
        objects[router_id] = [agent.helper(router_id, *h) for h in helpers]
        agent.server.helpers[router_id] = list(objects[router_id])
        agent.add_router(router_id, create_namespace=False)
        assert active(f"qrouter-{router_id}") == both(*helpers)
    agent.close()
    return objects


def process_router_iptables(namespace: str) -> None:
    """What the restarted L3 agent's ri.process() does to the namespace's iptables: a fresh
    IptablesManager with the agent's wrap name applies, dropping every `neutron-l3-agent-*`
    chain it does not declare (Neutron's helper chains among them)."""
    from neutron.agent.linux import iptables_manager

    manager = iptables_manager.IptablesManager(
        use_ipv6=True, namespace=namespace, binary_name="neutron-l3-agent"
    )
    manager.apply()


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_restart_leaves_no_port_without_its_helper(
    neutron_harness: Harness,
    neutron_extension_class: type,
    cthm_extension_class: type,
    routers: Callable[[], tuple[str, str]],
    backend: str,
) -> None:
    router_id, namespace = routers()
    helpers = run_by_neutron(neutron_harness, neutron_extension_class, {router_id: [FTP, TFTP]})

    agent = neutron_harness(cthm_extension_class, backend=backend, takeover_namespaces=[namespace])

    # Initialized, router not yet added: cthm's own rules already hold both helpers.
    if backend == "nftables":
        assert nft_rules(namespace) == both(FTP, TFTP)
    else:  # cthm's chains only (Neutron's are in the same raw tables)
        table = read_iptables(namespace)
        assert table is not None
        assert {(a.protocol.value, a.port, a.helper) for a in table.assignments} == {FTP, TFTP}
    # The agent's first process() of the router drops Neutron's chains: every port keeps
    # its helper, in both families.
    process_router_iptables(namespace)
    assert neutron_chains(namespace) == set()
    assert active(namespace) == both(FTP, TFTP)

    # The router's add_router: the server's truth (meanwhile tftp was deleted) replaces it.
    agent.server.helpers[router_id] = [h for h in helpers[router_id] if h.helper == "ftp"]
    agent.add_router(router_id, create_namespace=False)
    assert active(namespace) == both(FTP)
    state = json.loads((Path(agent.conf.cthm.state_path) / f"{router_id}.json").read_text())
    assert (state["status"], state["in_sync"]) == ("ACTIVE", True)


def test_a_namespace_whose_router_never_comes_loses_the_copy_after_the_grace(
    neutron_harness: Harness,
    neutron_extension_class: type,
    cthm_extension_class: type,
    routers: Callable[[], tuple[str, str]],
) -> None:
    (kept_id, kept), (gone_id, gone) = routers(), routers()
    helpers = run_by_neutron(
        neutron_harness, neutron_extension_class, {kept_id: [FTP], gone_id: [TFTP]}
    )

    # Exactly this test's namespaces: "qrouter-*" would take over other tests' (shared host).
    agent = neutron_harness(
        cthm_extension_class, takeover_namespaces=[kept, gone], takeover_grace=2
    )
    assert nft_rules(kept) == both(FTP)
    assert nft_rules(gone) == both(TFTP)
    agent.server.helpers[kept_id] = list(helpers[kept_id])
    agent.add_router(kept_id, create_namespace=False)

    deadline = time.monotonic() + 15
    while nft_rules(gone) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert nft_rules(gone) == set()
    assert nft_rules(kept) == both(FTP)  # its router was synced: never removed
    # Neutron's chains of the router that never came are not cthm's to remove.
    assert neutron_chains(gone) == {CTH, f"{CTH}-{helpers[gone_id][0].id[:7]}"}


def test_grace_zero_never_removes_and_close_leaves_no_thread(
    neutron_harness: Harness,
    neutron_extension_class: type,
    cthm_extension_class: type,
    routers: Callable[[], tuple[str, str]],
) -> None:
    import threading

    router_id, namespace = routers()
    run_by_neutron(neutron_harness, neutron_extension_class, {router_id: [FTP]})
    agent = neutron_harness(cthm_extension_class, takeover_namespaces=[namespace], takeover_grace=0)
    assert nft_rules(namespace) == both(FTP)
    agent.close()
    assert nft_rules(namespace) == both(FTP)
    assert not [t for t in threading.enumerate() if t.name == "cthm-takeover-grace"]


SAVED = """\
*raw
:PREROUTING ACCEPT [0:0]
:neutron-l3-agent-PREROUTING - [0:0]
:neutron-l3-agent-cth - [0:0]
:neutron-l3-agent-cth-1111111 - [0:0]
:neutron-l3-agent-cth-2222222 - [0:0]
:neutron-l3-agent-cth-3333333 - [0:0]
:other - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A neutron-l3-agent-PREROUTING -j neutron-l3-agent-cth
-A neutron-l3-agent-cth -j neutron-l3-agent-cth-1111111
-A neutron-l3-agent-cth -j neutron-l3-agent-cth-2222222
-A neutron-l3-agent-cth -j neutron-l3-agent-cth-3333333
-A neutron-l3-agent-cth-1111111 -p tcp -m tcp --dport 1720 -j CT --helper RAS
-A neutron-l3-agent-cth-2222222 -p udp -m udp --dport 69 -j CT --helper nope
-A neutron-l3-agent-cth-3333333 -p udp -m udp --dport 5060 -j CT --helper sip
-A other -p tcp -m tcp --dport 21 -j CT --helper ftp
COMMIT
"""


def test_the_candidates_are_the_router_namespaces_matching(tmp_path: Path) -> None:
    for name in ("qrouter-a", "snat-b", "fip-c", "qrouter-", "other"):
        (tmp_path / name).touch()

    assert candidates(["qrouter-*", "snat-*"], tmp_path) == ["qrouter-a", "snat-b"]
    assert candidates(["snat-*", "fip-*"], tmp_path) == ["snat-b"]
    assert candidates([], tmp_path) == []
    assert candidates(["*"], tmp_path / "missing") == []


def test_a_namespace_that_cannot_be_read_is_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Listed, but no such namespace in /run/netns (gone meanwhile): nothing written, no raise.
    name = f"qrouter-{uuid.uuid4()}"
    (tmp_path / name).touch()
    backend = NftablesBackend(SubprocessRunner())
    takeover = Takeover(backend, HelperCatalog(), NeutronRules(None))

    with caplog.at_level(logging.WARNING, logger="cthm.neutron.takeover"):
        assert takeover.run(["qrouter-*"], tmp_path) == {}

    assert f"namespace {name}: Neutron's conntrack helpers not taken over" in caplog.text


def test_neutrons_rules_become_ingress_assignments_the_catalog_knows() -> None:
    found = neutron_assignments([SAVED, SAVED], HelperCatalog())

    # RAS is udp only in the kernel: refused, as the unknown helper; another chain's rule is
    # not Neutron's helper chain; the same rule in both families is one assignment.
    assert found.assignments == (Assignment(Protocol.UDP, 5060, "sip", Direction.INGRESS),)
    assert [line.split()[1] for line in found.refused] == [
        "neutron-l3-agent-cth-1111111",
        "neutron-l3-agent-cth-2222222",
    ]
