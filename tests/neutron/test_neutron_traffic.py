"""Real traffic through cthm's Neutron L3 agent extension (issue 15): helpers delivered the way
Neutron delivers them (ConntrackHelper objects pushed through ResourcesPushRpcCallback, then the
consumer registry, then the extension) make active and passive FTP and TFTP work through a NAT
router with a strict firewall (only established/related allowed back in), and a DELETED push
takes them away again.

The router is cthm.testing's client/router/server topology whose router namespace is named as
Neutron names a router's, `qrouter-<router id>`; the harness takes that existing namespace
(`add_router(..., create_namespace=False)`) as the L3 agent would. Both backends.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cthm.testing import (
    HelperTraffic,
    NamespaceFactory,
    RunningServer,
    Topology,
    TransferFailed,
    build_topology,
    concurrently,
    conntrack_flush,
    missing_nat_helpers,
    run_in_namespace,
    start_ftp_server,
    start_tftp_server,
    write_random_file,
)

if TYPE_CHECKING:
    from cthm.testing.neutron import L3AgentHarness

pytest.importorskip("neutron")

pytestmark = [pytest.mark.kernel, pytest.mark.traffic]

FTP_FILE = "payload-ftp.bin"
TFTP_FILE = "payload-tftp.bin"
# Not multiples of any block size: the last TFTP block is short, FTP needs several reads.
FTP_SIZE = 128 * 1024 + 17
TFTP_SIZE = 32 * 1024 + 123
# tests/traffic's FTP client script, which has a passive mode (cthm.testing's is active only).
PEER_SCRIPT = Path(__file__).resolve().parents[1] / "traffic" / "peer_endpoints.py"
PASSIVE_TIMEOUT = 2.0  # each socket wait; a dropped data connection fails after it


class _NeutronNamed(NamespaceFactory):
    """A NamespaceFactory that names the router namespace as Neutron does: `qrouter-<id>`
    (the other namespaces keep the factory's unique prefix). cleanup() deletes exactly the
    names it created."""

    def __init__(self, router_id: str) -> None:
        super().__init__()
        self.router_id = router_id

    def name(self, label: str) -> str:
        return f"qrouter-{self.router_id}" if label == "router" else super().name(label)


@dataclass(frozen=True)
class NeutronTraffic:
    router_id: str
    traffic: HelperTraffic  # active FTP (LIST, RETR) and TFTP, from the client namespace

    @property
    def topology(self) -> Topology:
        return self.traffic.topology

    def passive_ftp(self) -> bytes:
        """Anonymous RETR in passive mode (PASV): the client opens the data connection, which
        the router's firewall lets through only as related to the control connection."""
        t, ftp = self.topology, self.traffic.ftp
        argv = [sys.executable, str(PEER_SCRIPT), "ftp-get", "--mode", "passive"]
        argv += ["--host", ftp.host, "--port", str(ftp.port), "--file", FTP_FILE]
        argv += ["--timeout", str(PASSIVE_TIMEOUT)]
        done = run_in_namespace(t.client_ns, argv, timeout=PASSIVE_TIMEOUT * 3 + 10, check=False)
        try:
            outcome: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise TransferFailed("ftp", "process", "NoResult", done.stderr[-2000:]) from None
        if not outcome["ok"]:
            raise TransferFailed("ftp", outcome["stage"], outcome["kind"], outcome["error"])
        return base64.b64decode(outcome["data"])

    def assert_passive_blocked(self) -> None:
        with pytest.raises(TransferFailed) as failed:
            self.passive_ftp()
        # Logged in and asked for the file: only the data connection was refused.
        assert failed.value.stage == "retr", f"failed before its data connection: {failed.value}"

    def assert_passive_works(self) -> None:
        try:
            got = self.passive_ftp()
        except TransferFailed as exc:
            raise AssertionError(f"passive FTP failed with the helper pushed: {exc}") from exc
        assert got == self.traffic.ftp.files[FTP_FILE], "passive FTP: other bytes than served"

    def assert_helpers_missing(self) -> None:
        concurrently(self.traffic.assert_helpers_missing, self.assert_passive_blocked)

    def assert_helpers_working(self) -> None:
        concurrently(self.traffic.assert_helpers_working, self.assert_passive_works)


def _serving(
    start: Callable[..., RunningServer], kind: str, t: Topology, tmp: Path, name: str, size: int
) -> RunningServer:
    root = tmp / f"{kind}-root"
    root.mkdir()
    write_random_file(root, name, size)
    server: RunningServer = start(t.server_ns, t.server_addr, root, state_dir=tmp / f"{kind}-state")
    return server


@pytest.fixture
def neutron_traffic(tmp_path: Path) -> Iterator[NeutronTraffic]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    missing = missing_nat_helpers()
    if missing:
        reason = f"kernel lacks {', '.join(missing)} (active FTP/TFTP through NAT need them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    router_id = str(uuid.uuid4())
    factory = _NeutronNamed(router_id)
    try:
        topology = build_topology(factory)
        assert topology.router_ns == f"qrouter-{router_id}"
        with (
            _serving(start_ftp_server, "ftp", topology, tmp_path, FTP_FILE, FTP_SIZE) as ftp,
            _serving(start_tftp_server, "tftp", topology, tmp_path, TFTP_FILE, TFTP_SIZE) as tftp,
        ):
            traffic = HelperTraffic(topology, ftp, tftp, FTP_FILE, TFTP_FILE)
            yield NeutronTraffic(router_id, traffic)
    finally:
        left = factory.cleanup()
        assert not left, f"could not delete namespaces {left}"


def kernel_holds(topology: Topology) -> tuple[list[str], str]:
    """The router namespace's nft table names and its iptables raw table."""
    tables = run_in_namespace(topology.router_ns, ["nft", "list", "tables"]).stdout.splitlines()
    raw = run_in_namespace(topology.router_ns, ["iptables-save", "-t", "raw"]).stdout
    return tables, raw


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_helpers_pushed_through_neutron_rpc_carry_ftp_and_tftp_and_a_delete_takes_them_away(
    neutron_traffic: NeutronTraffic,
    neutron_harness: Callable[..., L3AgentHarness],
    cthm_extension_class: type,
    backend: str,
) -> None:
    net = neutron_traffic
    harness = neutron_harness(cthm_extension_class, backend=backend)
    # The L3 agent adds the router (its namespace exists already); the server has no helper.
    harness.add_router(net.router_id, create_namespace=False)
    net.assert_helpers_missing()

    helpers = [
        harness.helper(net.router_id, "tcp", 21, "ftp"),
        harness.helper(net.router_id, "udp", 69, "tftp"),
    ]
    harness.push("created", helpers)
    net.assert_helpers_working()
    # From the backend asked for, not the other one.
    tables, raw = kernel_holds(net.topology)
    if backend == "nftables":
        assert "table inet cthm" in tables  # whole lines: not the test's cthm_test_fw
        assert "-j CT --helper" not in raw
    else:
        assert "table inet cthm" not in tables
        assert "--dport 21 -j CT --helper ftp" in raw
        assert "--dport 69 -j CT --helper tftp" in raw

    harness.push("deleted", helpers)
    # Connections tracked so far keep the helper they got; new ones must not get one.
    conntrack_flush(net.topology.router_ns)
    net.assert_helpers_missing()
    tables, raw = kernel_holds(net.topology)
    assert "-j CT --helper" not in raw
    if "table inet cthm" in tables:  # an empty table may stay: no chain, no helper
        table = run_in_namespace(net.topology.router_ns, ["nft", "list", "table", "inet", "cthm"])
        assert "ct helper set" not in table.stdout
