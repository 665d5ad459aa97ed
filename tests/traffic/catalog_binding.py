"""What a catalog helper's traffic test needs around its protocol peers: the kernel modules
(a skip naming the missing one), the router firewall opened for the protocol's control port
only, and the router's conntrack tables. Bindings go through bindings_api.bind_through_api.
"""

from __future__ import annotations

import os

import pytest

from cthm.testing import Topology, missing_nat_helpers, nft_apply, run_in_namespace


def require_kernel_modules(*modules: str) -> None:
    """Skips (fails in CI) naming the modules the kernel has neither built in, loaded, nor
    as a loadable module file."""
    missing = missing_nat_helpers(modules)
    if missing:
        reason = f"kernel lacks {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def allow_new_from_client(topology: Topology, protocol: str, port: int) -> None:
    """Lets new `protocol`/`port` connections from the client side through the router's
    strict forward firewall: the protocol's control flow, nothing else."""
    t = topology
    nft_apply(
        t.router_ns,
        f'add rule inet {t.firewall_table} forward iifname "{t.router_client_if}"'
        f' oifname "{t.router_server_if}" ip saddr {t.client_net} ip daddr {t.server_net}'
        f" ct state new {protocol} dport {port} accept\n",
    )


def router_conntrack(topology: Topology, *args: str) -> list[str]:
    """`conntrack ARGS` in the router namespace, as non-empty lines."""
    out = run_in_namespace(topology.router_ns, ["conntrack", *args]).stdout
    return [line for line in out.splitlines() if line.strip()]
