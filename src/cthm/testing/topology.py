"""A client, a router and a server namespace wired like a NAT gateway, for real-traffic tests.

```
 client ns                router ns                               server ns
 cli0 198.18.1.2/24 <-> rcli0 198.18.1.1/24 | rsrv0 198.19.2.1/24 <-> srv0 198.19.2.2/24
 default via router        forwarding on, strict firewall,             no route back to
                           masquerade towards the server               198.18.1.0/24
```

The router's firewall lives in its own table (`inet cthm_test_fw`), never in `inet cthm`, which
belongs to the product: forward policy drop, only new tcp/21 and udp/69 from the client side to
the server side, established/related accepted, masquerade out of the server-side link. Because
the server cannot route back to the client, active FTP and TFTP only work when the router runs
the ftp/tftp conntrack helpers *and* their NAT counterparts (nf_nat_ftp, nf_nat_tftp).

Safety: every link is created inside a namespace (the veth peer goes straight into the other
namespace), addresses are in 198.18.0.0/15, and the root namespace is never touched. The
namespaces come from a NamespaceFactory, whose cleanup() deletes them (and so the links).

For traffic the router itself originates (bindings with direction "output"), the router can
get a strict INPUT firewall in another table of its own (`inet cthm_test_in`, see
`router_input_ruleset`): only loopback and established/related packets reach the router's
sockets, so the server's active FTP data connection and the TFTP reply from a new port only
get through when the router's own control connection or request carries the helper.
"""

from __future__ import annotations

import gzip
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cthm.testing.netns import NamespaceFactory

FIREWALL_TABLE = "cthm_test_fw"
"""The router firewall's table (family inet): the harness's own, distinct from `inet cthm`."""

INPUT_FIREWALL_TABLE = "cthm_test_in"
"""The router's INPUT firewall table (family inet), installed by install_router_input_firewall."""

NAT_HELPER_MODULES = ("nf_nat_ftp", "nf_nat_tftp", "nf_conntrack_ftp", "nf_conntrack_tftp")
_KCONFIG = {
    "nf_nat_ftp": "CONFIG_NF_NAT_FTP",
    "nf_nat_tftp": "CONFIG_NF_NAT_TFTP",
    "nf_conntrack_ftp": "CONFIG_NF_CONNTRACK_FTP",
    "nf_conntrack_tftp": "CONFIG_NF_CONNTRACK_TFTP",
}
_COMMAND_TIMEOUT = 10.0


class TopologyError(RuntimeError):
    """A command building the topology failed; carries the command and its stderr."""


@dataclass(frozen=True)
class Topology:
    """Names and addresses of a built client/router/server topology."""

    client_ns: str
    router_ns: str
    server_ns: str
    client_if: str = "cli0"
    router_client_if: str = "rcli0"
    router_server_if: str = "rsrv0"
    server_if: str = "srv0"
    client_addr: str = "198.18.1.2"
    router_client_addr: str = "198.18.1.1"
    router_server_addr: str = "198.19.2.1"
    server_addr: str = "198.19.2.2"
    prefix_len: int = 24
    firewall_table: str = FIREWALL_TABLE
    input_firewall_table: str = INPUT_FIREWALL_TABLE

    @property
    def client_net(self) -> str:
        return "198.18.1.0/24"

    @property
    def server_net(self) -> str:
        return "198.19.2.0/24"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client_ns, self.router_ns, self.server_ns)


def firewall_ruleset(topology: Topology) -> str:
    """The router's strict stateful firewall and masquerade, as `nft -f` text."""
    t = topology
    from_client = (
        f'iifname "{t.router_client_if}" oifname "{t.router_server_if}" '
        f"ip saddr {t.client_net} ip daddr {t.server_net} ct state new"
    )
    return f"""\
table inet {t.firewall_table} {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        {from_client} tcp dport 21 accept
        {from_client} udp dport 69 accept
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{t.router_server_if}" masquerade
    }}
}}
"""


def router_input_ruleset(topology: Topology) -> str:
    """The router's strict INPUT firewall, as `nft -f` text.

    Only loopback and established/related packets reach the router's own sockets. A new TCP
    connection to the router is refused with a reset rather than silently dropped, so an
    active FTP data connection without the helper fails at once (the server answers 425)
    instead of after the client's timeout; everything else new (the TFTP reply from the
    server's new port) is dropped.
    """
    return f"""\
table inet {topology.input_firewall_table} {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        meta l4proto tcp reject with tcp reset
    }}
}}
"""


def install_router_input_firewall(topology: Topology) -> None:
    """Installs `router_input_ruleset` in the router namespace (one transaction)."""
    nft_apply(topology.router_ns, router_input_ruleset(topology))


def build_topology(factory: NamespaceFactory, *, label: str = "") -> Topology:
    """Creates the three namespaces, links, addresses, routes and the router firewall.

    `label` prefixes the namespace labels, so one factory can build several topologies.
    If a step fails the namespaces already created stay registered with the factory, whose
    cleanup() removes them.
    """
    client_ns = factory.create(f"{label}client")
    router_ns = factory.create(f"{label}router")
    server_ns = factory.create(f"{label}server")
    t = Topology(client_ns=client_ns, router_ns=router_ns, server_ns=server_ns)

    # Each veth is created inside a namespace, its peer directly in the other one.
    _veth(t.client_ns, t.client_if, t.router_ns, t.router_client_if)
    _veth(t.router_ns, t.router_server_if, t.server_ns, t.server_if)

    plen = t.prefix_len
    _ip_batch(
        t.client_ns,
        [
            f"addr add {t.client_addr}/{plen} dev {t.client_if}",
            f"link set {t.client_if} up",
            f"route add default via {t.router_client_addr}",
        ],
    )
    _ip_batch(
        t.server_ns,
        [
            f"addr add {t.server_addr}/{plen} dev {t.server_if}",
            f"link set {t.server_if} up",
            # Deliberately no route to the client network: replies must come back via NAT.
        ],
    )
    _ip_batch(
        t.router_ns,
        [
            f"addr add {t.router_client_addr}/{plen} dev {t.router_client_if}",
            f"addr add {t.router_server_addr}/{plen} dev {t.router_server_if}",
            f"link set {t.router_client_if} up",
            f"link set {t.router_server_if} up",
        ],
    )
    # Firewall first, forwarding second: never a moment of forwarding without the policy.
    nft_apply(t.router_ns, firewall_ruleset(t))
    _run(["ip", "netns", "exec", t.router_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    return t


def nft_apply(namespace: str, ruleset: str) -> None:
    """Applies `ruleset` with one `nft -f -` transaction inside `namespace`."""
    _run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset)


def conntrack_entries(
    namespace: str, protocol: str, dport: int, *, source: str | None = None
) -> list[str]:
    """The namespace's conntrack entries whose original direction goes to `dport`.

    `source`, if given, keeps only those whose original direction comes from that address
    (forwarded and router-originated connections to the same port live side by side).
    """
    argv = ["conntrack", "-L", "-p", protocol, "--orig-port-dst", str(dport)]
    if source is not None:
        argv += ["--orig-src", source]
    out = _run(["ip", "netns", "exec", namespace, *argv])
    return [line for line in out.splitlines() if line.strip()]


def conntrack_dump(namespace: str) -> str:
    """The namespace's conntrack and expectation tables as text, for failure messages.

    Never raises: a diagnostic must not hide the failure it explains.
    """
    parts = []
    for table in ("conntrack", "expect"):
        try:
            out = _run(["ip", "netns", "exec", namespace, "conntrack", "-L", table])
        except TopologyError as exc:
            out = str(exc)
        parts.append(f"{table}:\n{out.rstrip() or '(empty)'}")
    return "\n".join(parts)


def conntrack_flush(namespace: str) -> None:
    """Empties the namespace's conntrack table (and its expectations): a fresh start for
    the next probe, whose connections then get the helpers the rules assign now."""
    _run(["ip", "netns", "exec", namespace, "conntrack", "-F"])
    _run(["ip", "netns", "exec", namespace, "conntrack", "-F", "expect"])


def missing_nat_helpers(modules: Sequence[str] = NAT_HELPER_MODULES) -> list[str]:
    """Kernel modules the topology needs (or `modules`) that are neither built in nor loaded.

    A module shows in /sys/module when loaded (or built in with parameters); built-in ones
    without parameters only show in the kernel config, so both are consulted. Loadable
    ones that are absent are autoloaded when a helper is first used, if the module tree
    holds them, which is checked too.
    """
    config = _kernel_config()
    missing = []
    for module in modules:
        if Path("/sys/module", module).exists():
            continue
        # Kconfig names follow the module's (nf_nat_irc: CONFIG_NF_NAT_IRC).
        setting = config.get(_KCONFIG.get(module, f"CONFIG_{module.upper()}"))
        if setting == "y":
            continue
        if setting == "m" and _module_file_exists(module):
            continue
        missing.append(module)
    return missing


def _kernel_config() -> dict[str, str]:
    path = Path("/proc/config.gz")
    if not path.exists():
        return {}
    values = {}
    with gzip.open(path, "rt") as lines:
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if sep and key.startswith("CONFIG_"):
                values[key] = value
    return values


def _module_file_exists(module: str) -> bool:
    release = Path("/proc/sys/kernel/osrelease").read_text().strip()
    tree = Path("/lib/modules", release)
    if not tree.is_dir():
        return False
    names = {f"{module}.ko", f"{module}.ko.xz", f"{module}.ko.zst", f"{module}.ko.gz"}
    return any(p.name in names for p in tree.rglob(f"{module}.ko*"))


def _veth(namespace: str, name: str, peer_namespace: str, peer_name: str) -> None:
    _run(
        [
            *("ip", "-n", namespace, "link", "add", name, "type", "veth"),
            *("peer", "name", peer_name, "netns", peer_namespace),
        ]
    )


def _ip_batch(namespace: str, commands: Sequence[str]) -> None:
    # One process per namespace instead of one per command.
    _run(["ip", "-n", namespace, "-batch", "-"], input="\n".join(commands) + "\n")


def _run(argv: list[str], *, input: str | None = None) -> str:
    try:
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise TopologyError(f"{' '.join(argv)}: timed out after {_COMMAND_TIMEOUT}s") from exc
    if result.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout
