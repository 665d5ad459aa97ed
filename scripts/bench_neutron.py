#!/usr/bin/env python3
"""cthm's Neutron L3 agent extension beside Neutron's own (`make bench-neutron`, issue 15).

Both extensions are driven by the same harness (cthm.testing.neutron.L3AgentHarness: Neutron's
real L3AgentExtensionAPI, RouterInfo and ConntrackHelper objects, the push RPC through
ResourcesPushRpcCallback, bulk_pull answered in-process), on the same machine, in turns:
Neutron's `conntrack_helper` with its iptables manager (its only driver), then cthm's
`cthm_conntrack_helper` with `[cthm] backend = iptables` (the same driver family) and with its
default nftables.
- cold sync K routers x N helpers (100 x 10): a new extension (an agent's start), the server
  holding every router's helpers, then `add_router` for each router in turn (as the L3 agent
  calls it at start); timed from the first call until the last returned (the harness building
  each router's RouterInfo, as the agent does, included; beside it the extension's add_router
  calls alone). Each run on new namespaces (`ip -batch`), so every run starts from an empty
  kernel; the three sides take turns run by run, so the machine's load hits them alike.
- add one helper to a router holding N (1000): the router added (not timed), then one helper
  pushed as CREATED through the push RPC, timed until the push returned (both extensions apply
  a push before returning); then pushed as DELETED (not timed), so the router stays at N.
Every run is verified: after each cold sync and each push, every router's namespace is read
back (iptables-save / ip6tables-save of the raw table, or cthm's nftables table) and must hold
exactly the helpers the server holds, on both families (the helpers used, ftp and tftp, exist
for IPv4 and IPv6).

Namespaces are named as Neutron names a router's, `qrouter-<router id>`; the router ids carry
this process's pid (`qrouter-<pid, 8 digits>-...`) and every namespace is deleted by exactly
its name, also on failure, Ctrl-C or SIGTERM. Prints a table; --json prints ONE JSON object
on stdout instead (progress to stderr): the medians `neutron_ext_cold_100x10_ms`,
`cthm_ext_cold_100x10_ms`, `neutron_ext_add_one_n1000_ms`, `cthm_ext_add_one_n1000_ms` (cthm:
nftables, its default), `cold_ratio` and `add_one_ratio` (Neutron's / cthm's), the same ratios
iptables against iptables, every side's samples under `by_extension`, the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_support import Namespaces, run_command, run_measured

from cthm.netfilter import NftablesBackend, make_runner
from cthm.testing import NamespaceFactory

if TYPE_CHECKING:
    from cthm.testing.neutron import L3AgentHarness

# The contract's keys (issue 15), also in `make bench BENCH_ARGS=--json`. Neutron itself is
# imported only when the bench runs: bench.py imports this module with or without it.
KEYS = (
    "neutron_ext_cold_100x10_ms",
    "cthm_ext_cold_100x10_ms",
    "neutron_ext_add_one_n1000_ms",
    "cthm_ext_add_one_n1000_ms",
    "cold_ratio",
    "add_one_ratio",
)

# A router's helpers cycle through these (both exist for IPv4 and IPv6, so Neutron's
# extension, which writes every helper to ip6tables too, can apply them).
HELPERS = (("tcp", "ftp"), ("udp", "tftp"))
FIRST_PORT = 1000
ADDED_PORT = 30000  # the pushed helper's ports: above every loaded one
TAG = f"{os.getpid() % 10**8:08d}"  # the first group of every router id: whose namespaces


@dataclass(frozen=True)
class Side:
    extension: str  # "neutron" or "cthm"
    backend: str  # "iptables" or "nftables"

    @property
    def name(self) -> str:
        return f"{self.extension}-{self.backend}"

    @property
    def extension_class(self) -> type:
        if self.extension == "neutron":
            from neutron.agent.l3.extensions.conntrack_helper import (
                ConntrackHelperAgentExtension,
            )

            return ConntrackHelperAgentExtension  # type: ignore[no-any-return]
        from cthm.neutron.extension import CthmConntrackHelperExtension

        return CthmConntrackHelperExtension


SIDES = (Side("neutron", "iptables"), Side("cthm", "iptables"), Side("cthm", "nftables"))
MAIN = Side("cthm", "nftables")  # the contract's keys: cthm's default backend


@dataclass(frozen=True)
class Sizes:
    routers: int  # cold sync: routers ...
    per_router: int  # ... of this many helpers each
    cold_runs: int
    big: int  # helpers on the router one is added to
    adds: int


FULL = Sizes(routers=100, per_router=10, cold_runs=5, big=1000, adds=21)
QUICK = Sizes(routers=100, per_router=10, cold_runs=2, big=1000, adds=7)
# Whether the bench still runs (tests/bench/test_bench_neutron_smoke.py): figures meaningless.
TINY = Sizes(routers=3, per_router=4, cold_runs=1, big=20, adds=2)
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}


class RouterNamespaces(Namespaces):
    """bench_support's bulk namespaces, named `qrouter-<TAG>-...` as Neutron's are."""

    def __init__(self) -> None:
        super().__init__("qrouter-")
        self.factory = NamespaceFactory(prefix=f"qrouter-{TAG}-")


def router_id(run: int, index: int) -> str:
    """A UUID-shaped router id whose namespace is `qrouter-<TAG>-...` (the bench's own)."""
    return f"{TAG}-{run % 0x10000:04x}-4000-8000-{index:012x}"


def loaded(count: int) -> list[tuple[str, int, str]]:
    """A router's helpers (protocol, port, helper): ports from FIRST_PORT, HELPERS in turn."""
    rows = []
    for i in range(count):
        protocol, helper = HELPERS[i % len(HELPERS)]
        rows.append((protocol, FIRST_PORT + i, helper))
    return rows


# --- reading the kernel back -------------------------------------------------------------------

CT_RULE = re.compile(r"-p (tcp|udp)\b.*--dport (\d+)\b.*-j CT --helper (\S+)")


def iptables_helpers(namespace: str, tool: str) -> set[tuple[str, int, str]]:
    """(protocol, port, helper) of every `-j CT --helper` rule in the namespace's raw table."""
    text = run_command(["ip", "netns", "exec", namespace, tool, "-t", "raw"])
    found = set()
    for line in text.splitlines():
        match = CT_RULE.search(line)
        if line.startswith("-A ") and match:
            found.add((match[1], int(match[2]), match[3]))
    return found


def verify(
    side: Side, namespace: str, want: list[tuple[str, int, str]], nft: NftablesBackend | None
) -> None:
    """The namespace holds exactly `want`, on both families (RuntimeError otherwise)."""
    expected = set(want)
    if side.backend == "iptables":
        have = {
            "IPv4": iptables_helpers(namespace, "iptables-save"),
            "IPv6": iptables_helpers(namespace, "ip6tables-save"),
        }
    else:
        assert nft is not None
        table = nft.read(namespace)
        if table is None or not table.clean:
            raise RuntimeError(f"VERIFY FAILED for {namespace}: {table}")
        # One inet table: a helper of both families is one assignment.
        rows = {(a.protocol.value, a.port, a.helper) for a in table.assignments}
        have = {"inet": rows}
    for family, rows in have.items():
        if rows != expected:
            raise RuntimeError(
                f"VERIFY FAILED for {side.name} in {namespace} ({family}): "
                f"missing {sorted(expected - rows)[:5]}, extra {sorted(rows - expected)[:5]}"
            )


# --- the runs ----------------------------------------------------------------------------------


@contextmanager
def harnessed(side: Side, work: Path, label: str) -> Iterator[L3AgentHarness]:
    """A new extension (an L3 agent's start) of `side` in the harness; closed afterwards."""
    from cthm.testing.neutron import L3AgentHarness

    state = work / f"{side.name}-{label}"
    state.mkdir()
    harness = L3AgentHarness(side.extension_class, state_path=state, backend=side.backend)
    try:
        yield harness
    finally:
        harness.close()


@contextmanager
def router_namespaces(ids: list[str]) -> Iterator[list[str]]:
    """`qrouter-<id>` for each id, made in bulk; deleted by exactly their names afterwards."""
    namespaces = RouterNamespaces()
    try:
        yield namespaces.create([i.removeprefix(f"{TAG}-") for i in ids])
    finally:
        left = namespaces.cleanup()
        if left:
            print(f"warning: could not delete namespaces {left}", file=sys.stderr)


def cold(
    side: Side, sizes: Sizes, work: Path, run: int, nft: NftablesBackend | None
) -> tuple[float, float]:
    """One cold sync of sizes.routers routers through add_router; ms: the whole (the agent's
    RouterInfo for each router, built by the harness, included) and the extension's
    add_router calls alone."""
    ids = [router_id(run, i) for i in range(sizes.routers)]
    want = loaded(sizes.per_router)
    with router_namespaces(ids) as names, harnessed(side, work, f"cold{run}") as harness:
        for rid in ids:
            harness.server.helpers[rid] = [harness.helper(rid, p, port, h) for p, port, h in want]
        in_extension = timed_calls(harness.extension, "add_router")
        start = time.perf_counter()
        for rid in ids:
            harness.add_router(rid, create_namespace=False)
        elapsed = (time.perf_counter() - start) * 1000
        for name in names:
            verify(side, name, want, nft)
    return elapsed, in_extension[0] * 1000


def timed_calls(obj: Any, method: str) -> list[float]:
    """Wraps obj.method (on the instance) to add each call's seconds to the returned total;
    measurement only: the call itself is unchanged."""
    total = [0.0]
    inner = getattr(obj, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    setattr(obj, method, timed)
    return total


def add_one(
    side: Side, sizes: Sizes, work: Path, run: int, nft: NftablesBackend | None
) -> list[float]:
    """sizes.adds pushes of one helper to a router holding sizes.big; ms each."""
    rid = router_id(run, 0)
    want = loaded(sizes.big)
    samples = []
    with router_namespaces([rid]) as (name,), harnessed(side, work, "add") as harness:
        harness.server.helpers[rid] = [harness.helper(rid, p, port, h) for p, port, h in want]
        harness.add_router(rid, create_namespace=False)
        verify(side, name, want, nft)
        for i in range(sizes.adds):
            added = ("tcp", ADDED_PORT + i, "ftp")
            helper = harness.helper(rid, *added)
            start = time.perf_counter()
            harness.push("created", [helper])
            samples.append((time.perf_counter() - start) * 1000)
            verify(side, name, [*want, added], nft)
            harness.push("deleted", [helper])
            verify(side, name, want, nft)
    return samples


def median(samples: list[float]) -> float:
    return round(statistics.median(samples), 2)


def run(stack: ExitStack, out: dict[str, Any], sizes: Sizes, say: Callable[[str], None]) -> None:
    """Every side's figures into `out` (the contract's keys; the samples in `by_extension`)."""
    out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    out["sizes"] = {k: getattr(sizes, k) for k in Sizes.__dataclass_fields__}
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cthm-bench-n-")))
    nft = NftablesBackend(make_runner("libnftables"))  # a reader of its own, for verify
    stack.callback(nft.close)
    by: dict[str, dict[str, Any]] = {}
    out["by_extension"] = by
    cold_key = f"cold_{sizes.routers}x{sizes.per_router}"
    add_key = f"add_one_n{sizes.big}"
    # The sides take turns run by run: a change in the machine's load hits all of them alike.
    runs: dict[Side, list[tuple[float, float]]] = {side: [] for side in SIDES}
    for r in range(sizes.cold_runs):
        for side in SIDES:
            reader = nft if side.backend == "nftables" else None
            runs[side].append(cold(side, sizes, work, r + 1, reader))
    adds = {
        side: add_one(side, sizes, work, 0, nft if side.backend == "nftables" else None)
        for side in SIDES
    }
    say(
        f"{'extension':<10} {'backend':<9} {cold_key + ' (median)':>22}"
        f" {'in add_router':>14} {add_key + ' (median)':>22}"
    )
    for side in SIDES:
        colds = [whole for whole, _ in runs[side]]
        by[side.name] = {
            "cold_ms": median(colds),
            "cold_samples_ms": [round(x, 2) for x in colds],
            "cold_in_extension_ms": median([inside for _, inside in runs[side]]),
            "add_one_ms": median(adds[side]),
            "add_one_samples_ms": [round(x, 2) for x in adds[side]],
        }
        row = by[side.name]
        figures = (
            f"{row['cold_ms']:>19.2f} ms {row['cold_in_extension_ms']:>11.2f} ms"
            f" {row['add_one_ms']:>19.2f} ms"
        )
        say(f"{side.extension:<10} {side.backend:<9} {figures}")
    neutron, cthm_ipt, cthm = by["neutron-iptables"], by["cthm-iptables"], by[MAIN.name]
    out["neutron_ext_cold_100x10_ms"] = neutron["cold_ms"]
    out["cthm_ext_cold_100x10_ms"] = cthm["cold_ms"]
    out["neutron_ext_add_one_n1000_ms"] = neutron["add_one_ms"]
    out["cthm_ext_add_one_n1000_ms"] = cthm["add_one_ms"]
    out["cold_ratio"] = ratio(neutron["cold_ms"], cthm["cold_ms"])
    out["add_one_ratio"] = ratio(neutron["add_one_ms"], cthm["add_one_ms"])
    out["cold_ratio_iptables"] = ratio(neutron["cold_ms"], cthm_ipt["cold_ms"])
    out["add_one_ratio_iptables"] = ratio(neutron["add_one_ms"], cthm_ipt["add_one_ms"])
    say(
        f"Neutron / cthm: cold {out['cold_ratio']}x, add one {out['add_one_ratio']}x (nftables);"
        f" cold {out['cold_ratio_iptables']}x, add one {out['add_one_ratio_iptables']}x"
        " (iptables against iptables); target 20x"
    )
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


def ratio(neutron_ms: float, cthm_ms: float) -> float:
    return round(neutron_ms / cthm_ms, 1) if cthm_ms > 0 else 0.0


def quiet_logging() -> None:
    """Only errors beside the table: both extensions log every router at INFO or DEBUG."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    for name in ("cthm", "neutron", "oslo", "oslo_messaging", "oslo_concurrency"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # oslo.versionedobjects and eventlet's deprecations: noise, not results.
    warnings.simplefilter("ignore")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a minute)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few routers, one repetition: only whether the bench runs (figures meaningless)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (progress to stderr)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it creates network namespaces)")
    quiet_logging()
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    human = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=human, flush=True)

    out: dict[str, Any] = {}
    code = run_measured(out, lambda stack: run(stack, out, sizes, say))
    out["quick"] = args.quick
    if args.tiny:
        out["tiny"] = True  # the keys name sizes the runs do not have
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
