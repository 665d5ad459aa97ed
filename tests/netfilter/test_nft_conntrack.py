"""The rendered table really assigns helpers to new connections (read from conntrack), and the
layout fact it depends on: a chain at priority raw (before conntrack lookup) assigns nothing.

Two namespaces joined by a veth pair (198.18.0.0/30); a packet from the client to the router
creates a conntrack entry in the router, whose `helper=` field shows what was assigned.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import LibNftablesRunner, NftablesBackend, desired_table
from cthm.testing import NamespaceFactory, run_in_namespace

from .conftest import nft

pytestmark = [pytest.mark.kernel, pytest.mark.traffic]

CLIENT_IP, ROUTER_IP = "198.18.0.1", "198.18.0.2"
ASSIGNED = [
    Assignment(Protocol.TCP, 21, "ftp"),
    Assignment(Protocol.UDP, 69, "tftp"),
    Assignment(Protocol.UDP, 5060, "sip"),
]
FIREWALL = """\
add table inet fw
add chain inet fw input { type filter hook input priority filter; policy accept; }
add rule inet fw input ct state established,related accept
"""
LISTENER = f"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{ROUTER_IP}", 21))
s.listen(1)
s.settimeout(10)
print("ready", flush=True)
try:
    conn, _ = s.accept()
    conn.close()
except OSError:
    sys.exit(1)
"""
CLIENT = f"""
import socket
for port in (69, 5060):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("{ROUTER_IP}", port))
    u.close()
socket.create_connection(("{ROUTER_IP}", 21), timeout=5).close()
"""


@pytest.fixture
def pair(netns: NamespaceFactory) -> tuple[str, str]:
    client, router = netns.create("cli"), netns.create("rtr")
    run_in_namespace(client, ["ip", "link", "add", "c0", "type", "veth", "peer", "name", "r0"])
    run_in_namespace(client, ["ip", "link", "set", "r0", "netns", router])
    run_in_namespace(client, ["ip", "addr", "add", f"{CLIENT_IP}/30", "dev", "c0"])
    run_in_namespace(router, ["ip", "addr", "add", f"{ROUTER_IP}/30", "dev", "r0"])
    run_in_namespace(client, ["ip", "link", "set", "c0", "up"])
    run_in_namespace(router, ["ip", "link", "set", "r0", "up"])
    # A stateful firewall, as routers have: it is what makes the kernel track connections here.
    nft(router, "-f", "-", stdin=FIREWALL)
    return client, router


def helpers_seen(client: str, router: str) -> dict[int, str | None]:
    """Sends one udp packet to 69 and 5060 and opens one tcp connection to 21 on the router;
    returns the helper conntrack assigned to each, by destination port."""
    listener = subprocess.Popen(
        ["ip", "netns", "exec", router, sys.executable, "-c", LISTENER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        run_in_namespace(client, [sys.executable, "-c", CLIENT], timeout=10)
        assert listener.wait(timeout=10) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=10)
        if listener.stdout is not None:
            listener.stdout.close()
    seen: dict[int, str | None] = {}
    for line in run_in_namespace(router, ["conntrack", "-L"]).stdout.splitlines():
        fields: dict[str, str] = {}
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep:
                fields.setdefault(key, value)  # the first of each: the original direction
        if fields.get("src") == CLIENT_IP and "dport" in fields:
            seen[int(fields["dport"])] = fields.get("helper")
    return seen


def test_rendered_table_assigns_helpers(pair: tuple[str, str]) -> None:
    client, router = pair
    runner = LibNftablesRunner()
    try:
        backend = NftablesBackend(runner)
        backend.apply(router, ASSIGNED)
        assert backend.read(router) == desired_table(ASSIGNED)
    finally:
        runner.close()
    assert helpers_seen(client, router) == {21: "ftp", 69: "tftp", 5060: "sip"}


def test_without_our_table_no_helper_runs(pair: tuple[str, str]) -> None:
    client, router = pair
    assert helpers_seen(client, router) == {21: None, 69: None, 5060: None}


def test_chain_at_raw_priority_assigns_nothing(pair: tuple[str, str]) -> None:
    client, router = pair
    runner = LibNftablesRunner()
    try:
        NftablesBackend(runner).apply(router, ASSIGNED)
    finally:
        runner.close()
    nft(
        router,
        "-f",
        "-",
        stdin="delete chain inet cthm prerouting\n"
        "add chain inet cthm prerouting { type filter hook prerouting priority raw; }\n"
        'add rule inet cthm prerouting ct helper set tcp dport map { 21 : "ftp-tcp" }\n'
        'add rule inet cthm prerouting ct helper set udp dport map { 69 : "tftp-udp", '
        '5060 : "sip-udp" }\n',
    )
    assert helpers_seen(client, router) == {21: None, 69: None, 5060: None}
