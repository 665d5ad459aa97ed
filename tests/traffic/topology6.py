"""IPv6 on the traffic topology, and more control ports through the router's firewall.

`add_ipv6` gives a built cthm.testing.Topology a second, routed (not NATed) IPv6 plane:

```
 client ns                  router ns                                   server ns
 cli0 fd00:18:1::2/64 <-> rcli0 fd00:18:1::1/64 | rsrv0 fd00:19:2::1/64 <-> srv0 fd00:19:2::2/64
 default via router         forwarding on, the same strict firewall,      route back to the
                            IPv6 exempt from the masquerade                client's /64
```

IPv6 tenant networks have no NAT, so the server routes back to the client; what still makes
the helpers necessary is the router's strict stateful firewall (`inet cthm_test_fw`, forward
policy drop): new IPv6 connections pass only to the control ports `allow_new` opens, everything
else only as established or related. The additions are nft rules added to the harness's own
table, so the IPv4 plane stays exactly as build_topology makes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from cthm.testing import Topology, nft_apply, run_in_namespace

Family = Literal["ipv4", "ipv6"]


@dataclass(frozen=True)
class Plane:
    """The addresses of one address family of a topology."""

    family: Family
    client_addr: str
    router_client_addr: str
    router_server_addr: str
    server_addr: str
    client_net: str
    server_net: str


def ipv4_plane(topology: Topology) -> Plane:
    t = topology
    return Plane(
        "ipv4",
        t.client_addr,
        t.router_client_addr,
        t.router_server_addr,
        t.server_addr,
        t.client_net,
        t.server_net,
    )


IPV6 = Plane(
    "ipv6",
    client_addr="fd00:18:1::2",
    router_client_addr="fd00:18:1::1",
    router_server_addr="fd00:19:2::1",
    server_addr="fd00:19:2::2",
    client_net="fd00:18:1::/64",
    server_net="fd00:19:2::/64",
)


def add_ipv6(topology: Topology) -> Plane:
    """Addresses, routes and forwarding for IPv6; the firewall keeps dropping new connections."""
    t, p = topology, IPV6
    # nodad: the addresses are usable at once instead of after duplicate address detection.
    _ip6(t.client_ns, f"addr add {p.client_addr}/64 dev {t.client_if} nodad")
    _ip6(t.client_ns, f"route add default via {p.router_client_addr}")
    _ip6(t.server_ns, f"addr add {p.server_addr}/64 dev {t.server_if} nodad")
    _ip6(t.server_ns, f"route add {p.client_net} via {p.router_server_addr}")
    _ip6(t.router_ns, f"addr add {p.router_client_addr}/64 dev {t.router_client_if} nodad")
    _ip6(t.router_ns, f"addr add {p.router_server_addr}/64 dev {t.router_server_if} nodad")
    # No NAT for IPv6: an accept in a nat chain ends that chain before the masquerade.
    nft_apply(
        t.router_ns,
        f"insert rule inet {t.firewall_table} postrouting meta nfproto ipv6 accept\n",
    )
    # The firewall's forward chain (policy drop) is already in place: forwarding comes second.
    run_in_namespace(
        t.router_ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"], timeout=10
    )
    _wait_no_tentative((t.client_ns, t.router_ns, t.server_ns))
    return p


def _wait_no_tentative(namespaces: tuple[str, ...], timeout: float = 10.0) -> None:
    """Until no address is tentative: the veths' link-local addresses still go through
    duplicate address detection (~2 s), and traffic sent before it ends is lost (a test that
    started at once saw its first FTP connect time out)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        pending = [
            ns
            for ns in namespaces
            if run_in_namespace(ns, ["ip", "-6", "addr", "show", "tentative"], timeout=10).stdout
        ]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not pending, f"IPv6 addresses still tentative in {pending}"


def allow_new(topology: Topology, plane: Plane, protocol: str, port: int) -> None:
    """Lets new connections from the client to the server's `protocol`/`port` through."""
    t = topology
    addr = "ip" if plane.family == "ipv4" else "ip6"
    rule = (
        f'iifname "{t.router_client_if}" oifname "{t.router_server_if}" '
        f"{addr} saddr {plane.client_net} {addr} daddr {plane.server_net} ct state new "
        f"{protocol} dport {port} accept"
    )
    nft_apply(t.router_ns, f"add rule inet {t.firewall_table} forward {rule}\n")


def allow_ftp_and_tftp(topology: Topology, plane: Plane) -> None:
    """The control ports build_topology opens for IPv4, for `plane` (no-op for IPv4)."""
    if plane.family == "ipv6":
        allow_new(topology, plane, "tcp", 21)
        allow_new(topology, plane, "udp", 69)


def _ip6(namespace: str, command: str) -> None:
    run_in_namespace(namespace, ["ip", "-6", *command.split()], timeout=10)
