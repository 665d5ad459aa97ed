"""Test harness shipped with cthm: real network namespaces that a test owns and cleans up,
and a client/router/server topology with FTP and TFTP servers to prove helpers with traffic,
for connections the router forwards and for those it originates itself.
"""

from cthm.testing.helpertraffic import HelperAssigner, HelperTraffic, Origin, concurrently
from cthm.testing.netns import NamespaceFactory, netns_exists, run_in_namespace
from cthm.testing.servers import (
    RunningServer,
    ServerStartFailed,
    TrafficError,
    TransferFailed,
    ftp_active_download,
    ftp_active_list,
    start_ftp_server,
    start_tftp_server,
    tcp_probe,
    tftp_download,
    write_random_file,
)
from cthm.testing.topology import (
    Topology,
    TopologyError,
    build_topology,
    conntrack_entries,
    conntrack_flush,
    firewall_ruleset,
    install_router_input_firewall,
    missing_nat_helpers,
    nft_apply,
    router_input_ruleset,
)

__all__ = [
    "HelperAssigner",
    "HelperTraffic",
    "NamespaceFactory",
    "Origin",
    "RunningServer",
    "ServerStartFailed",
    "Topology",
    "TopologyError",
    "TrafficError",
    "TransferFailed",
    "build_topology",
    "concurrently",
    "conntrack_entries",
    "conntrack_flush",
    "firewall_ruleset",
    "ftp_active_download",
    "ftp_active_list",
    "install_router_input_firewall",
    "missing_nat_helpers",
    "netns_exists",
    "nft_apply",
    "router_input_ruleset",
    "run_in_namespace",
    "start_ftp_server",
    "start_tftp_server",
    "tcp_probe",
    "tftp_download",
    "write_random_file",
]
