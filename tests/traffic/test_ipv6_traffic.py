"""IPv6 (fd00::/8, routed, no NAT) through the router's strict stateful firewall, on both
backends: active FTP (EPRT), passive FTP (EPSV), TFTP and a SIP call's media fail without
bindings and work once they are POSTed to a real `cthm serve` (nftables: `inet cthm`;
iptables: the ip6tables raw chain), with the helpers' expectations seen in the router's
conntrack. Helpers the kernel has only for IPv4 (irc, pptp, snmp, netbios-ns) are reported as
such, are left out of IPv6 in the kernel, and IPv4 traffic through the same router still works.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from bindings_api import bind_through_api, catalog
from catalog_binding import require_kernel_modules
from peers import ftp_get, start_tftp_server, tftp_get
from peers_sip import SIP_PORT, CallOutcome, require_sipp
from sip_media import MediaOutcome, call_with_media
from topology6 import Plane, add_ipv6, allow_ftp_and_tftp, allow_new

from cthm.testing import (
    RunningServer,
    Topology,
    TransferFailed,
    conntrack_flush,
    run_in_namespace,
    start_ftp_server,
    write_random_file,
)
from cthm.testing.service import ServerProcess

pytestmark = [pytest.mark.kernel, pytest.mark.traffic, pytest.mark.catalog]

FILE = "payload.bin"
SIZE = 64 * 1024 + 123  # not a multiple of TFTP's 512-byte block
IPV4_ONLY = ("irc", "pptp", "snmp", "netbios-ns")


@dataclass(frozen=True)
class Net6:
    topology: Topology
    plane: Plane
    ftp: RunningServer
    tftp: RunningServer
    content: bytes


@pytest.fixture
def net6(topology: Topology, tmp_path: Path) -> Iterator[Net6]:
    plane = add_ipv6(topology)
    allow_ftp_and_tftp(topology, plane)
    allow_new(topology, plane, "udp", SIP_PORT)
    root = tmp_path / "root"
    root.mkdir()
    content = write_random_file(root, FILE, SIZE)
    ns, host = topology.server_ns, plane.server_addr
    with (
        start_ftp_server(ns, host, root, state_dir=tmp_path / "ftp") as ftp,
        start_tftp_server(ns, host, root, tmp_path / "tftp") as tftp,
    ):
        yield Net6(topology, plane, ftp, tftp, content)


def _attempt(call: Callable[[], bytes]) -> bytes | TransferFailed:
    try:
        return call()
    except TransferFailed as exc:
        return exc


def transfers(net: Net6) -> dict[str, Callable[[], bytes]]:
    client, server = net.topology.client_ns, net.plane.server_addr
    return {
        "ftp-active": lambda: ftp_get(client, server, FILE, "active"),
        "ftp-passive": lambda: ftp_get(client, server, FILE, "passive"),
        "tftp": lambda: tftp_get(client, server, FILE),
    }


def run_all(
    net: Net6, tmp: Path
) -> tuple[dict[str, bytes | TransferFailed], CallOutcome, MediaOutcome]:
    """Every transfer and a SIP call at once (the failures are timeouts: let them overlap)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_attempt, call) for name, call in transfers(net).items()}
        call, media = call_with_media(net.topology, net.plane, tmp)
        return {name: f.result() for name, f in futures.items()}, call, media


class ExpectEvents:
    """`conntrack -E expect` in the router while traffic runs: the helpers' expectations are
    seen as they are created, however short they live (an FTP one only until the data
    connection arrives)."""

    def __init__(self, namespace: str, out: Path) -> None:
        self.out = out
        with out.open("wb") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, "conntrack", "-E", "expect"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        time.sleep(0.3)  # subscribed before the traffic starts
        if self.process.poll() is not None:
            raise AssertionError(f"conntrack -E expect exited: {self.stop()}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(3)
        return self.out.read_text(errors="replace")


def test_ipv6_ftp_tftp_and_sip_need_their_bindings(
    net6: Net6, service: ServerProcess, backend: str, tmp_path: Path
) -> None:
    require_sipp()
    require_kernel_modules("nf_conntrack_sip")  # no NAT on IPv6: the conntrack part only
    t, plane = net6.topology, net6.plane

    outcomes, call, media = run_all(net6, tmp_path / "without")
    for name, outcome in outcomes.items():
        assert isinstance(outcome, TransferFailed), f"{name} worked without a helper"
        # The control path worked: FTP logged in, the TFTP request went out; only the
        # second flow (data connection, reply from a new port) was dropped.
        assert outcome.stage in ("retr", "transfer"), (name, outcome)
    requests = ["conntrack", "-L", "-f", "ipv6", "-p", "udp", "--orig-port-dst", "69"]
    assert plane.client_addr in _run(t, requests), "the TFTP request never crossed the router"
    assert call.completed, call.logs
    assert call.offer.address == plane.client_addr  # no NAT on IPv6: the SDP is as sent
    assert media.received is None, media
    assert "timeout" in (media.failure or ""), media
    assert "helper=" not in media.expectations, media.expectations

    bind_through_api(
        service, t, [("tcp", 21, "ftp"), ("udp", 69, "tftp"), ("udp", SIP_PORT, "sip")]
    )
    # The IPv6 helpers come from the backend asked for: `inet cthm`, or the ip6tables chain.
    saved6 = _run(t, ["ip6tables-save", "-t", "raw"])
    if backend == "nftables":
        assert "cthm-PREROUTING" not in saved6, saved6
        assert "table inet cthm" in _run(t, ["nft", "list", "tables"]).splitlines()
    else:
        assert "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp" in saved6
        assert "-A cthm-PREROUTING -p udp -m udp --dport 5060 -j CT --helper sip" in saved6
    conntrack_flush(t.router_ns)
    events = ExpectEvents(t.router_ns, tmp_path / "expect-events.txt")
    try:
        outcomes, call, media = run_all(net6, tmp_path / "with")
    finally:
        seen = events.stop()
    for name, outcome in outcomes.items():
        assert outcome == net6.content, (name, outcome)
    assert call.completed, call.logs
    assert media.received == b"rtp-with", media
    assert media.sender == plane.server_addr, media
    assert "helper=sip" in media.expectations, media.expectations
    for helper in ("ftp", "tftp", "sip"):
        assert f"helper={helper}" in seen, seen
    assert plane.client_addr in seen, seen  # IPv6 expectations, not IPv4 ones


def test_ipv4_only_helpers_are_reported_and_ipv4_still_works_beside_ipv6(
    net6: Net6,
    service: ServerProcess,
    backend: str,
    tftp_server: RunningServer,
    tmp_path: Path,
) -> None:
    t = net6.topology
    entries = catalog(service)
    assert {h for h in IPV4_ONLY if entries[f"{h}/{_protocol(h)}"]["ipv6"]} == set(), entries
    assert entries["sip/udp"]["ipv6"], entries
    assert entries["tftp/udp"]["ipv6"], entries

    listed = bind_through_api(service, t, [("tcp", 6667, "irc"), ("udp", 69, "tftp")])
    assert {b["helper"]: b["status"] for b in listed} == {"irc": "ACTIVE", "tftp": "ACTIVE"}
    if backend == "nftables":
        table = _run(t, ["nft", "list", "table", "inet", "cthm"])
        # The kernel has irc for IPv4 only: the object reads back as `ip`, tftp as `inet`.
        assert 'type "irc" protocol tcp\n\t\tl3proto ip\n' in table, table
        assert 'type "tftp" protocol udp\n\t\tl3proto inet\n' in table, table
    else:
        assert "--helper irc" in _run(t, ["iptables-save", "-t", "raw"])
        saved6 = _run(t, ["ip6tables-save", "-t", "raw"])
        assert "--helper irc" not in saved6, saved6
        assert "--helper tftp" in saved6, saved6

    # IPv4 through the same router: the tftp binding works beside the irc one ...
    name, content = next(iter(tftp_server.files.items()))
    assert tftp_get(t.client_ns, t.server_addr, name) == content
    # ... and so does IPv6.
    assert tftp_get(t.client_ns, net6.plane.server_addr, FILE) == net6.content


def _protocol(helper: str) -> str:
    return "tcp" if helper in ("irc", "pptp") else "udp"


def _run(t: Topology, argv: list[str]) -> str:
    return run_in_namespace(t.router_ns, argv).stdout
