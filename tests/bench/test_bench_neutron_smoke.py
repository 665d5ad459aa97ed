"""`scripts/bench_neutron.py --tiny --json` still runs against the code as it is: Neutron's L3
agent extension and cthm's side by side (issue 15), one JSON object with every key measured and
every run verified, every namespace it made deleted. A few routers and one repetition (seconds):
the figures are not looked at (benchmarks are not timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cthm.netfilter import NETNS_DIR

pytest.importorskip("neutron")

pytestmark = [pytest.mark.kernel]

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench_neutron.py"
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTHM_")}
    process = subprocess.Popen(
        [sys.executable, str(BENCH), "--tiny", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        stdout, stderr = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.terminate()  # it unwinds: namespaces deleted, extensions closed
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"bench did not finish in time: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]
    out = json.loads(stdout)  # the whole of stdout: one object
    assert out["ok"] is True, out.get("error")
    assert out["tiny"] is True
    missing = {k for k in KEYS if not isinstance(out.get(k), float | int) or out[k] <= 0}
    assert not missing, f"not measured: {missing}; {stderr[-2000:]}"
    assert set(out["by_extension"]) == SIDES
    for side in out["by_extension"].values():
        assert side["cold_samples_ms"], side
        assert len(side["add_one_samples_ms"]) == out["sizes"]["adds"]
    # Its namespaces are `qrouter-<its pid, 8 digits>-...`; none may be left.
    prefix = f"qrouter-{process.pid % 10**8:08d}-"
    assert not [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix)]
