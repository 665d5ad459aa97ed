"""Test kit shipped with cthm for its users (`pip install cthm[testing]`): real network
namespaces that a test owns and cleans up, a client/router/server topology with FTP and TFTP
servers to prove helpers with traffic (for connections the router forwards and for those it
originates itself), a real `cthm serve` process, and fake hosts (a mount namespace each, with
its own /run/netns) running `cthm agent run` as on several network nodes, and a throwaway
PostgreSQL cluster (a temporary directory, the `postgres` user, a free port). Nothing in cthm
itself imports it (an import-linter contract); helpers only cthm's own suite needs live in its
tests/.
"""

from cthm.testing.helpertraffic import HelperAssigner, HelperTraffic, Origin, concurrently
from cthm.testing.hosts import AgentProcess, FakeHost, FakeHostError
from cthm.testing.netns import NamespaceFactory, netns_exists, run_in_namespace
from cthm.testing.postgres import PostgresCluster, PostgresClusterError
from cthm.testing.servers import (
    RunningServer,
    ServerStartFailed,
    TrafficError,
    TransferFailed,
    ftp_active_download,
    ftp_active_list,
    start_ftp_server,
    start_tftp_server,
    stop_process,
    tcp_probe,
    tftp_download,
    write_random_file,
)
from cthm.testing.service import ServerProcess
from cthm.testing.topology import (
    Topology,
    TopologyError,
    build_topology,
    conntrack_entries,
    conntrack_flush,
    install_router_input_firewall,
    missing_nat_helpers,
    nft_apply,
)

__all__ = [
    "AgentProcess",
    "FakeHost",
    "FakeHostError",
    "HelperAssigner",
    "HelperTraffic",
    "NamespaceFactory",
    "Origin",
    "PostgresCluster",
    "PostgresClusterError",
    "RunningServer",
    "ServerProcess",
    "ServerStartFailed",
    "Topology",
    "TopologyError",
    "TrafficError",
    "TransferFailed",
    "build_topology",
    "concurrently",
    "conntrack_entries",
    "conntrack_flush",
    "ftp_active_download",
    "ftp_active_list",
    "install_router_input_firewall",
    "missing_nat_helpers",
    "netns_exists",
    "nft_apply",
    "run_in_namespace",
    "start_ftp_server",
    "start_tftp_server",
    "stop_process",
    "tcp_probe",
    "tftp_download",
    "write_random_file",
]
