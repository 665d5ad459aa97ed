"""`scripts/bench.py --json` still runs against the code as it is: one JSON object with every
key of issue 14's table measured, and every namespace it made deleted. Tiny fleets and one
repetition (seconds): the figures are not looked at (benchmarks are not timed tests)."""

from __future__ import annotations

import importlib.util
import os

import pytest

from cthm.netfilter import NETNS_DIR
from support.bench_runs import run_tiny_json

pytestmark = [pytest.mark.kernel, pytest.mark.server, pytest.mark.database]

KEYS = {
    "add_one_n1000_ms",
    "delete_one_n1000_ms",
    "api_to_kernel_n1000_p50_ms",
    "api_to_kernel_n1000_p99_ms",
    "api_to_kernel_n10_p50_ms",
    "cold_100x10_ms",
    "cold_100x1000_ms",
    "cold_1000x10_ms",
    "noop_resync_100_ms",
    "post_ack_p50_ms",
}
# Issue 15's (scripts/bench_neutron.py, merged in), when the `neutron` package is installed.
NEUTRON_KEYS = {
    "neutron_ext_cold_100x10_ms",
    "cthm_ext_cold_100x10_ms",
    "neutron_ext_add_one_n1000_ms",
    "cthm_ext_add_one_n1000_ms",
    "cold_ratio",
    "add_one_ratio",
}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_bench_json_has_every_key_measured_and_leaves_no_namespace() -> None:
    out, stderr, pid = run_tiny_json("bench.py", timeout=110)
    keys = KEYS | (NEUTRON_KEYS if importlib.util.find_spec("neutron") else set())
    missing = {k for k in keys if not isinstance(out.get(k), float | int) or out[k] <= 0}
    assert not missing, f"not measured: {missing}; {stderr[-2000:]}"
    # Its namespaces carry its pid; none may be left.
    prefixes = tuple(f"{kind}{pid % 100000}-" for kind in ("cthmb", "cthmk"))
    prefixes += (f"qrouter-{pid % 10**8:08d}-",)  # bench_neutron's routers
    left = [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefixes)]
    assert not left


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_bench_only_measures_that_scenario_and_leaves_no_namespace() -> None:
    out, stderr, pid = run_tiny_json("bench.py", timeout=60, extra=("--only", "add-delete"))
    measured = {k for k in KEYS if out.get(k) is not None}
    assert measured == {"add_one_n1000_ms", "delete_one_n1000_ms"}, stderr[-2000:]
    assert all(out[k] > 0 for k in measured)
    prefix = f"cthmb{pid % 100000}-"
    assert not [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)]
