"""Test harness shipped with cthm: real network namespaces that a test owns and cleans up,
and a client/router/server topology with FTP and TFTP servers to prove helpers with traffic.
"""

from cthm.testing.helpertraffic import HelperAssigner, HelperTraffic
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
    firewall_ruleset,
    missing_nat_helpers,
    nft_apply,
)

__all__ = [
    "HelperAssigner",
    "HelperTraffic",
    "NamespaceFactory",
    "RunningServer",
    "ServerStartFailed",
    "Topology",
    "TopologyError",
    "TrafficError",
    "TransferFailed",
    "build_topology",
    "conntrack_entries",
    "firewall_ruleset",
    "ftp_active_download",
    "ftp_active_list",
    "missing_nat_helpers",
    "netns_exists",
    "nft_apply",
    "run_in_namespace",
    "start_ftp_server",
    "start_tftp_server",
    "tcp_probe",
    "tftp_download",
    "write_random_file",
]
