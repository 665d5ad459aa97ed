"""`scripts/bench_neutron.py --tiny --json` still runs against the code as it is: Neutron's L3
agent extension and cthm's side by side (issue 15), one JSON object with every key measured and
every run verified, every namespace it made deleted. A few routers and one repetition (seconds):
the figures are not looked at (benchmarks are not timed tests)."""

from __future__ import annotations

import os

import pytest

from cthm.netfilter import NETNS_DIR
from support.bench_runs import run_tiny_json

pytest.importorskip("neutron")

pytestmark = [pytest.mark.kernel]

KEYS = {
    "neutron_ext_cold_100x10_ms",
    "cthm_ext_cold_100x10_ms",
    "neutron_ext_add_one_n1000_ms",
    "cthm_ext_add_one_n1000_ms",
    "cold_ratio",
    "add_one_ratio",
}
SIDES = {"neutron-iptables", "cthm-iptables", "cthm-nftables"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_bench_neutron_json_has_every_key_measured_and_leaves_no_namespace() -> None:
    out, stderr, pid = run_tiny_json("bench_neutron.py", timeout=90)
    missing = {k for k in KEYS if not isinstance(out.get(k), float | int) or out[k] <= 0}
    assert not missing, f"not measured: {missing}; {stderr[-2000:]}"
    assert set(out["by_extension"]) == SIDES
    for side in out["by_extension"].values():
        assert side["cold_samples_ms"], side
        assert len(side["add_one_samples_ms"]) == out["sizes"]["adds"]
    # Its namespaces are `qrouter-<its pid, 8 digits>-...`; none may be left.
    prefix = f"qrouter-{pid % 10**8:08d}-"
    assert not [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)]
