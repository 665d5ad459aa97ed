"""Fixtures for real-traffic tests: a client/router/server topology, FTP and TFTP servers in
the server namespace, and `helper_traffic` to prove whether the router runs the helpers.

How helpers get assigned is the `assign_helpers` fixture (a HelperAssigner: Topology -> None).
Here it applies a hand-written `inet cthm` table; a module that assigns helpers another way
(the cthm API and agent) overrides `assign_helpers` and calls
`helper_traffic.prove(assign_helpers)`.

`router_traffic` is the same servers with the router namespace itself as the client, behind the
router's strict INPUT firewall: the proof for bindings with direction "output".
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from traffic_support import assign_with_nft

from cthm.testing import (
    HelperAssigner,
    HelperTraffic,
    NamespaceFactory,
    RunningServer,
    Topology,
    build_topology,
    install_router_input_firewall,
    missing_nat_helpers,
    start_ftp_server,
    start_tftp_server,
    write_random_file,
)
from cthm.testing.service import ServerProcess

FTP_FILE = "payload-ftp.bin"
TFTP_FILE = "payload-tftp.bin"
# Not multiples of any block size: the last TFTP block is short, FTP needs several reads.
FTP_SIZE = 256 * 1024 + 17
TFTP_SIZE = 64 * 1024 + 123


@pytest.fixture
def topology(netns: NamespaceFactory) -> Topology:
    missing = missing_nat_helpers()
    if missing:
        reason = f"kernel lacks {', '.join(missing)} (active FTP/TFTP through NAT need them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return build_topology(netns)


def _serving(
    start: Callable[..., RunningServer],
    kind: str,
    topology: Topology,
    tmp_path: Path,
    name: str,
    size: int,
) -> Iterator[RunningServer]:
    """`start` serving one random file `name` of `size` bytes in the server namespace."""
    root = tmp_path / f"{kind}-root"
    root.mkdir()
    write_random_file(root, name, size)
    with start(
        topology.server_ns, topology.server_addr, root, state_dir=tmp_path / f"{kind}-state"
    ) as server:
        yield server


@pytest.fixture
def ftp_server(topology: Topology, tmp_path: Path) -> Iterator[RunningServer]:
    yield from _serving(start_ftp_server, "ftp", topology, tmp_path, FTP_FILE, FTP_SIZE)


@pytest.fixture
def tftp_server(topology: Topology, tmp_path: Path) -> Iterator[RunningServer]:
    yield from _serving(start_tftp_server, "tftp", topology, tmp_path, TFTP_FILE, TFTP_SIZE)


@pytest.fixture
def helper_traffic(
    topology: Topology, ftp_server: RunningServer, tftp_server: RunningServer
) -> HelperTraffic:
    return HelperTraffic(topology, ftp_server, tftp_server, FTP_FILE, TFTP_FILE)


@pytest.fixture
def assign_helpers() -> HelperAssigner:
    """How the router gets its helpers; override in a module to assign them another way."""
    return functools.partial(assign_with_nft, priority="filter")


@pytest.fixture
def nft_assigner_at() -> Callable[[str], HelperAssigner]:
    """Hand-written assigners at a given chain priority ("filter", "raw", a number)."""
    return lambda priority: functools.partial(assign_with_nft, priority=priority)


@pytest.fixture
def router_traffic(helper_traffic: HelperTraffic) -> HelperTraffic:
    """The router namespace as the FTP/TFTP client of the same servers, behind its strict
    INPUT firewall: only helpers on the router's own connections let the data/reply in."""
    install_router_input_firewall(helper_traffic.topology)
    return helper_traffic.router_originated()


@pytest.fixture(scope="module", params=["nftables", "iptables"])
def backend(request: pytest.FixtureRequest) -> str:
    """The kernel backend a `service` runs: every test through cthm runs on both (module
    scope: the module's tests on one backend share its server)."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp(f"serve-{backend}")
    with ServerProcess(base / "data", base / "logs", args=("--backend", backend)) as s:
        yield s


@pytest.fixture
def service(served: ServerProcess) -> Iterator[ServerProcess]:
    """A real `cthm serve` (API and in-process agent) on `backend`: one per module and backend
    (a start cost a few seconds of each test); every router a test made is deleted when it
    ends, so the next test meets a server with none."""
    assert served.process is not None
    assert served.process.poll() is None, served.logs()  # an earlier test left it dead
    yield served
    with httpx.Client(base_url=served.url, timeout=10, headers=served.auth_headers()) as client:
        listed = client.get("/v2.0/routers")
        assert listed.status_code == 200, listed.text
        for router in listed.json()["routers"]:
            deleted = client.delete(f"/v2.0/routers/{router['id']}")
            assert deleted.status_code == 204, deleted.text
