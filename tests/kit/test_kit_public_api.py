"""cthm.testing is the test kit cthm ships for its users (the `cthm[testing]` extra): exactly
these names, nothing of the suite's own helpers, and nothing the product itself loads."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import cthm.testing

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

EXPECTED = {
    # namespaces
    "NamespaceFactory",
    "netns_exists",
    "run_in_namespace",
    # topology: client, router and server namespaces, the router's firewall, conntrack
    "Topology",
    "TopologyError",
    "build_topology",
    "conntrack_entries",
    "conntrack_flush",
    "install_router_input_firewall",
    "missing_nat_helpers",
    "nft_apply",
    # traffic: FTP and TFTP peers and clients, and the proof a helper works
    "HelperAssigner",
    "HelperTraffic",
    "Origin",
    "RunningServer",
    "ServerStartFailed",
    "TrafficError",
    "TransferFailed",
    "concurrently",
    "ftp_active_download",
    "ftp_active_list",
    "start_ftp_server",
    "start_tftp_server",
    "stop_process",
    "tcp_probe",
    "tftp_download",
    "write_random_file",
    # a real `cthm serve`
    "ServerProcess",
    # several hosts on one machine: a mount namespace each, running `cthm agent run`
    "AgentProcess",
    "FakeHost",
    "FakeHostError",
    # a throwaway PostgreSQL cluster, databases copied from a migrated template
    "PostgresCluster",
    "PostgresClusterError",
}

SUITE_ONLY = ("cthm.testing.faults",)
"""Modules that moved to tests/support: the fault suite's API client and kernel readers."""

PRODUCT_ENTRY_POINTS = ("cthm.cli.main", "cthm.api", "cthm.agent", "cthm.cli.service")


def test_the_kit_exports_exactly_its_public_names() -> None:
    assert set(cthm.testing.__all__) == EXPECTED
    assert len(cthm.testing.__all__) == len(EXPECTED), "a name listed twice"
    missing = [name for name in EXPECTED if not hasattr(cthm.testing, name)]
    assert not missing


def test_suite_only_helpers_are_not_shipped() -> None:
    for module in SUITE_ONLY:
        assert importlib.util.find_spec(module) is None, module


def test_the_product_loads_neither_the_kit_nor_its_dependencies() -> None:
    # A fresh interpreter: this one has the kit loaded already.
    probe = (
        "import importlib, json, sys\n"
        f"for name in {PRODUCT_ENTRY_POINTS!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
        "import cthm.testing\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    product, with_kit = (set(json.loads(line)) for line in done.stdout.splitlines())
    assert not _within(product, "cthm.testing", "pyftpdlib", "tftpy", "pytest")
    # The kit works in any test runner, and its FTP/TFTP peers load in their own processes.
    assert not _within(with_kit, "pyftpdlib", "tftpy", "pytest")


def test_the_kit_dependencies_are_an_extra_the_test_extra_includes() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements}

    assert {"pyftpdlib", "tftpy"} <= names(extras["testing"])
    assert not {"pyftpdlib", "tftpy"} & names(project["dependencies"])
    assert "cthm[testing]" in extras["test"]


def _within(modules: set[str], *packages: str) -> set[str]:
    return {m for m in modules for p in packages if m == p or m.startswith(p + ".")}
