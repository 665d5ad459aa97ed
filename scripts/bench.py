#!/usr/bin/env python3
"""cthm benchmark (`make bench`): every row of issue 14's table, on the real kernel, in
namespaces it creates; every measured run verified by reading the tables back.

Agent side (per runner: libnftables in-process, the nft binary, iptables), each scenario on
its own fleet (database and namespaces; bindings loaded in bulk, not timed); with libnftables
the agent's backend has the kernel-worker processes `cthm serve` gives it on this machine
(`--kernel-processes N` to choose; netfilter/sync_processes.py):
- cold sync K routers x N (100x10, 100x1000, 1000x10): the kernel emptied and every status
  PENDING, then from Agent.resync() (the full sync of every router: the agent's start and its
  periodic resync) until the agent applied every router, in an agent running already (its
  libnftables contexts made, as in issue 14's figures); every table read back. Beside it
  (`cold_start_*`, no target): the same from a NEW agent and backend's start() (a process
  start: a libnftables context is made per namespace).
- add / delete one binding on a router holding 1000 (of the 100x1000 fleet), with its agent
  running since its cold sync: the binding written to the database (not timed), then from
  queueing the router until the agent applied it; the table read back.
- no-op resync of 100 routers (the 100x10 fleet, nothing changed): from Agent.resync() until
  every router was reconciled; nothing may be written.
Through a real `cthm serve` (scripts/bench_api_kernel.py): POST -> kernel on routers holding
1000 and 10 (a netlink listener in the namespace stamps the kernel's commit), and POST
acknowledged (SQLite, one client).
Then Neutron's L3 agent extension beside cthm's (scripts/bench_neutron.py, issue 15; its keys
merged into the JSON object) unless --no-neutron or the `neutron` package is missing.

Prints medians beside the targets and Neutron's figures (issue 14); --json prints instead ONE
JSON object on stdout (the progress lines go to stderr): the keys of issue 14, from the
libnftables runner (the agent's default), plus the other runners' figures under `by_runner`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_api_kernel
import bench_neutron
from bench_support import LoadedRouter, Namespaces, load_routers, run_measured
from sqlalchemy import update

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import HelperCatalog, assignments_for, new_binding
from cthm.netfilter import (
    IptablesBackend,
    NftablesBackend,
    SyncProcesses,
    default_process_count,
    make_runner,
)
from cthm.settings import Settings
from cthm.store import Store
from cthm.store.tables import BindingRow, RouterRow

SETTLE_TIMEOUT = 300.0
RUNNERS = ("libnftables", "subprocess", "iptables")


@dataclass(frozen=True)
class Key:
    name: str  # the JSON key
    label: str
    target_ms: float | None
    neutron_ms: float | None


# Targets and Neutron's figures: issue 14's table (Neutron's agent measured on this machine).
KEYS = [
    Key("add_one_n1000_ms", "add one binding at N=1000", 3, 264),
    Key("delete_one_n1000_ms", "delete one binding at N=1000", 3, None),
    Key("api_to_kernel_n1000_p50_ms", "API POST -> kernel, N=1000, p50", 8, None),
    Key("api_to_kernel_n1000_p99_ms", "API POST -> kernel, N=1000, p99", 30, None),
    Key("api_to_kernel_n10_p50_ms", "API POST -> kernel, N=10, p50", 5, None),
    Key("cold_100x10_ms", "cold sync 100 routers x 10", 100, 4290),
    Key("cold_100x1000_ms", "cold sync 100 routers x 1000", 2000, 67700),
    Key("cold_1000x10_ms", "cold sync 1000 routers x 10", 1000, None),
    Key("noop_resync_100_ms", "no-op resync 100 routers", 30, 1600),
    # Not in issue 14's table: a cold sync by a NEW agent (process start), no target.
    Key("cold_start_100x10_ms", "cold start (new agent) 100 x 10", None, None),
    Key("cold_start_1000x10_ms", "cold start (new agent) 1000 x 10", None, None),
    Key("cold_start_100x1000_ms", "cold start (new agent) 100 x 1000", None, None),
    Key("post_ack_p50_ms", "POST acknowledged (SQLite), p50", 3, None),
]


# Kernel-worker processes of the agent's nftables backend (libnftables): the product's default
# unless --kernel-processes says otherwise (netfilter/sync_processes.py).
KERNEL_PROCESSES = [default_process_count()]


def make_backend(kind: str) -> NftablesBackend | IptablesBackend:
    return IptablesBackend() if kind == "iptables" else NftablesBackend(make_runner(kind))


class Fleet:
    """One scenario's routers: its own database, its namespaces, bindings loaded in bulk."""

    def __init__(
        self,
        label: str,
        count: int,
        size: int,
        work: Path,
        namespaces: Namespaces,
        catalog: HelperCatalog,
    ) -> None:
        self.label = label
        self.catalog = catalog
        names = namespaces.create([f"{label}{i}" for i in range(count)])
        self.store = Store(f"sqlite:///{work / f'{label}.db'}")
        self.store.migrate()
        self.routers: list[LoadedRouter] = load_routers(
            self.store, catalog, [(f"{label}{i}", n, size) for i, n in enumerate(names)]
        )
        self.agent: Agent | None = None
        self.backend: NftablesBackend | IptablesBackend | None = None

    def __len__(self) -> int:
        return len(self.routers)

    def start_agent(self, kind: str) -> Agent:
        """A new agent with a new backend (stopping the previous ones): a cold start."""
        self.stop_agent()
        self.backend = make_backend(kind)
        if kind == "libnftables" and KERNEL_PROCESSES[0]:  # as `cthm serve` builds it
            assert isinstance(self.backend, NftablesBackend)
            processes = SyncProcesses(KERNEL_PROCESSES[0], owner=None)
            self.backend = NftablesBackend(self.backend.runner, processes=processes)
        # No orphan sweep: the benchmark must never touch namespaces it did not create.
        self.agent = Agent(
            LocalStoreSource(self.store),
            self.backend,
            self.catalog,
            workers=Settings.model_fields["agent_workers"].default,  # as `cthm serve`
            resync_interval=86400,  # the resync is measured on demand, never by the timer
            sweep_orphans=False,
        )
        self.agent.start()
        return self.agent

    def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def verify(self, routers: Sequence[LoadedRouter], kind: str) -> None:
        """Each router's table read back from the kernel (a reader of its own) as desired."""
        reader = make_backend(kind)
        try:
            for entry in routers:
                have = reader.read(entry.router.namespace)
                want = reader.desired(assignments_for(self.catalog, entry.bindings))
                if have != want:
                    raise RuntimeError(
                        f"VERIFY FAILED for {entry.router.namespace}: have {have}, want {want}"
                    )
        finally:
            reader.close()

    def wipe(self, kind: str, *, keep_agent: bool = False) -> None:
        """Empty kernel and PENDING statuses: the state a cold start finds (the agent stopped
        unless keep_agent: it must then be idle)."""
        if not keep_agent:
            self.stop_agent()
        wiper = make_backend(kind)
        try:
            for entry in self.routers:
                wiper.delete(entry.router.namespace)
        finally:
            wiper.close()
        with self.store.unit_of_work() as repo:
            session = repo._session  # bench-only reset, outside the product's API
            session.execute(update(RouterRow).values(status="PENDING"))
            session.execute(update(BindingRow).values(status="PENDING"))

    def close(self) -> None:
        self.stop_agent()
        self.store.close()


def settle(agent: Agent, done: Callable[[], bool]) -> None:
    """Until `done()` (counted by the agent's reconciles) and nothing is queued or in flight.
    Woken by the agent's queue; polled only while work is not queued yet (e.g. delayed)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        if agent.wait_settled(timeout=max(0.0, deadline - time.monotonic())) and done():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent did not settle: counts {dict(agent.counts)}")
        time.sleep(0.0002)


def reconciled(agent: Agent, names: tuple[str, ...], before: int, n: int) -> Callable[[], bool]:
    """True once the agent's counts `names` grew by n since `before`."""
    return lambda: counted(agent, *names) - before >= n


def counted(agent: Agent, *names: str) -> int:
    return sum(agent.counts[name] for name in names)


def cold(fleet: Fleet, kind: str, starts: int, reps: int) -> tuple[list[float], list[float]]:
    """Cold syncs from an empty kernel: `starts` times a new agent and backend (a process
    start: every libnftables context made anew), then `reps` times the last agent's full
    resync (its contexts made). Leaves that agent running."""
    start_samples, samples = [], []
    for _ in range(starts):
        fleet.wipe(kind)
        start = time.perf_counter()
        new = fleet.start_agent(kind)
        settle(new, reconciled(new, ("applied", "failed"), 0, len(fleet)))
        start_samples.append((time.perf_counter() - start) * 1000)
        check_none_failed(new, fleet)
        fleet.verify(fleet.routers, kind)
    agent = fleet.agent
    assert agent is not None, "starts >= 1"
    for _ in range(reps):
        fleet.wipe(kind, keep_agent=True)
        before = agent.counts["applied"]
        start = time.perf_counter()
        agent.resync()
        settle(agent, reconciled(agent, ("applied", "failed"), before, len(fleet)))
        samples.append((time.perf_counter() - start) * 1000)
        check_none_failed(agent, fleet)
        fleet.verify(fleet.routers, kind)
    return start_samples, samples


def check_none_failed(agent: Agent, fleet: Fleet) -> None:
    if agent.counts["failed"]:
        raise RuntimeError(f"cold sync of {fleet.label}: {agent.counts['failed']} failed")


def noop_resync(fleet: Fleet, kind: str, reps: int) -> list[float]:
    """Needs the fleet's agent running after its cold sync."""
    agent = fleet.agent
    assert agent is not None
    samples = []
    for _ in range(reps):
        applied = agent.counts["applied"]
        before = counted(agent, "applied", "noop", "failed")
        start = time.perf_counter()
        agent.resync()
        settle(agent, reconciled(agent, ("applied", "noop", "failed"), before, len(fleet)))
        samples.append((time.perf_counter() - start) * 1000)
        if agent.counts["applied"] != applied:
            raise RuntimeError("a no-op resync wrote to the kernel")
    fleet.verify(fleet.routers, kind)
    return samples


def add_delete(fleet: Fleet, kind: str, reps: int) -> tuple[list[float], list[float]]:
    """One binding added then deleted on the fleet's first router, `reps` times each; needs
    the fleet's agent running after its cold sync."""
    agent = fleet.agent
    assert agent is not None
    entry = fleet.routers[0]
    router = entry.router
    add_samples, del_samples = [], []

    for i in range(reps):
        with fleet.store.unit_of_work() as repo:
            binding = repo.add_binding(
                new_binding(fleet.catalog, router, protocol="tcp", port=30000 + i, helper="ftp")
            )
        entry.bindings.append(binding)
        before = agent.counts["applied"]
        start = time.perf_counter()
        agent.enqueue([router.id])
        settle(agent, reconciled(agent, ("applied",), before, 1))
        add_samples.append((time.perf_counter() - start) * 1000)
        fleet.verify([entry], kind)
        with fleet.store.unit_of_work() as repo:
            repo.delete_binding(router.id, binding.id)
        entry.bindings.remove(binding)
        before = agent.counts["applied"]
        start = time.perf_counter()
        agent.enqueue([router.id])
        settle(agent, reconciled(agent, ("applied",), before, 1))
        del_samples.append((time.perf_counter() - start) * 1000)
        fleet.verify([entry], kind)
    return add_samples, del_samples


@dataclass
class Sizes:
    starts: int  # cold starts (a new agent) of each fleet
    reps: int  # cold syncs of the small fleets, no-op resyncs
    big_reps: int  # cold syncs of 100 x 1000
    writes: int  # adds (and deletes) at N=1000
    rounds: int  # API -> kernel rounds per router
    posts: int  # acknowledged POSTs
    # (label, routers, bindings each): the 100 x 10, 1000 x 10 and 100 x 1000 fleets.
    fleets: tuple[tuple[str, int, int], ...] = (("s", 100, 10), ("m", 1000, 10), ("b", 100, 1000))


# --only: the scenario's fleet alone (the iteration loop of issue 14's agent-side rows).
ONLY = {"add-delete": "b", "noop": "s"}
QUICK = Sizes(starts=1, reps=3, big_reps=2, writes=10, rounds=20, posts=50)
FULL = Sizes(starts=3, reps=7, big_reps=5, writes=21, rounds=100, posts=200)
# Whether the bench still runs (tests/kit/test_bench_smoke.py), in seconds: figures meaningless.
TINY = Sizes(
    starts=1,
    reps=1,
    big_reps=1,
    writes=2,
    rounds=3,
    posts=3,
    fleets=(("s", 5, 10), ("m", 10, 10), ("b", 3, 100)),
)


def run_agent_side(
    kind: str,
    fleets: dict[str, Fleet],
    sizes: Sizes,
    say: Callable[[str], None],
    only: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every agent-side row with one runner (the fleets given; `only`: that scenario, after
    one cold start of its fleet); key -> {median_ms, runs}."""
    rows: dict[str, dict[str, Any]] = {}

    def note(key: str, samples: list[float]) -> None:
        if not samples:
            return
        rows[key] = {"median_ms": round(statistics.median(samples), 2), "runs": len(samples)}
        say(line(kind, key, rows[key]["median_ms"], len(samples)))

    small, big, many = fleets.get("s"), fleets.get("b"), fleets.get("m")
    try:
        for fleet, key, reps in (
            (small, "cold_100x10_ms", sizes.reps),
            (many, "cold_1000x10_ms", sizes.reps),
            (big, "cold_100x1000_ms", sizes.big_reps),
        ):
            if fleet is None:
                continue
            starts, samples = cold(fleet, kind, sizes.starts, 0 if only else reps)
            note(f"cold_start_{key.removeprefix('cold_')}", starts)
            note(key, samples)
            if fleet is small:
                note("noop_resync_100_ms", noop_resync(small, kind, sizes.reps))
            if fleet is not big:
                fleet.stop_agent()
        if big is not None:
            adds, deletes = add_delete(big, kind, sizes.writes)
            note("add_one_n1000_ms", adds)
            note("delete_one_n1000_ms", deletes)
    finally:
        # The next runner (another backend) starts from an empty kernel.
        for fleet in fleets.values():
            fleet.wipe(kind)
    return rows


def line(runner: str, key: str, value: float | None, runs: int | str) -> str:
    spec = next(k for k in KEYS if k.name == key)
    target = f"{spec.target_ms:g} ms" if spec.target_ms else "-"
    neutron = f"{spec.neutron_ms:g} ms" if spec.neutron_ms else "-"
    if value is None:
        return f"{runner:<12} {spec.label:<34} {'-':>10} {runs!s:>5} {target:>9} {neutron:>9}"
    ratio = f"{spec.neutron_ms / value:.0f}x" if spec.neutron_ms and value else "-"
    flag = " MISSED" if spec.target_ms and value > spec.target_ms else ""
    return (
        f"{runner:<12} {spec.label:<34} {value:>7.2f} ms {runs!s:>5} {target:>9} {neutron:>9}"
        f" {ratio:>10}{flag}"
    )


def header() -> str:
    return (
        f"{'runner':<12} {'scenario':<34} {'median':>10} {'runs':>5} {'target':>9} "
        f"{'Neutron':>9} {'vs Neutron':>10}"
    )


def run(
    stack: ExitStack,
    out: dict[str, Any],
    kinds: list[str],
    sizes: Sizes,
    api: bool,
    say: Callable[[str], None],
    neutron: str | None = None,
    only: str | None = None,
) -> None:
    """Every row into `out` (issue 14's keys, None until measured); `neutron`: the size of
    scripts/bench_neutron.py's run (issue 15's keys), None to skip it; `only`: one agent-side
    scenario (ONLY)."""
    out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    out["by_runner"] = {}
    out["targets_ms"] = {k.name: k.target_ms for k in KEYS}
    out["neutron_ms"] = {k.name: k.neutron_ms for k in KEYS if k.neutron_ms}
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cthm-bench-")))
    say(header())
    if kinds:
        catalog = HelperCatalog()
        namespaces = Namespaces("cthmb")
        stack.callback(_cleanup, namespaces)
        t = time.perf_counter()
        fleets: dict[str, Fleet] = {}
        for label, count, size in sizes.fleets:
            if only is not None and label != ONLY[only]:
                continue
            fleets[label] = Fleet(label, count, size, work, namespaces, catalog)
            stack.callback(fleets[label].close)
        print(
            f"setup: {len(namespaces.factory.created)} namespaces, "
            f"{sum(len(r.bindings) for f in fleets.values() for r in f.routers)} bindings "
            f"in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        for kind in kinds:
            rows = run_agent_side(kind, fleets, sizes, say, only)
            out["by_runner"][kind] = rows
        main_kind = "libnftables" if "libnftables" in kinds else kinds[0]
        out["agent_runner"] = main_kind
        for key, row in out["by_runner"][main_kind].items():
            out[key] = row["median_ms"]
    if api:
        figures: dict[str, Any] = {}
        bench_api_kernel.run(stack, figures, sizes.rounds, sizes.posts, lambda _: None)
        out["api"] = figures
        n1000 = figures["api_to_kernel"]["n1000"]
        n10 = figures["api_to_kernel"]["n10"]
        out["api_to_kernel_n1000_p50_ms"] = n1000["post_to_kernel"]["p50_ms"]
        out["api_to_kernel_n1000_p99_ms"] = n1000["post_to_kernel"]["p99_ms"]
        out["api_to_kernel_n10_p50_ms"] = n10["post_to_kernel"]["p50_ms"]
        out["api_to_kernel_n10_p99_ms"] = n10["post_to_kernel"]["p99_ms"]
        out["api_delete_to_kernel_n1000_p50_ms"] = n1000["delete_to_kernel"]["p50_ms"]
        out["post_ack_p50_ms"] = figures["post_ack"]["p50_ms"]
        out["post_ack_p99_ms"] = figures["post_ack"]["p99_ms"]
        rounds = n1000["post_to_kernel"]["n"]
        for key in ("api_to_kernel_n1000_p50_ms", "api_to_kernel_n1000_p99_ms"):
            say(line("serve", key, out[key], rounds))
        say(line("serve", "api_to_kernel_n10_p50_ms", out["api_to_kernel_n10_p50_ms"], rounds))
        say(line("serve", "post_ack_p50_ms", out["post_ack_p50_ms"], figures["post_ack"]["n"]))
        timeouts = n1000["timeouts"] + n10["timeouts"]
        if timeouts:
            raise RuntimeError(f"API -> kernel: {timeouts} writes never reached the kernel")
    if neutron is not None:
        extensions: dict[str, Any] = {}
        bench_neutron.run(stack, extensions, bench_neutron.SIZES[neutron], say)
        out["neutron"] = extensions
        out.update({key: extensions[key] for key in bench_neutron.KEYS})
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]


def _cleanup(namespaces: Namespaces) -> None:
    count = len(namespaces.factory.created)
    left = namespaces.cleanup()
    print(f"cleanup: {count - len(left)}/{count} namespaces deleted", file=sys.stderr, flush=True)
    if left:
        print(f"warning: could not delete namespaces {left}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runner",
        choices=[*RUNNERS, "all", "none"],
        default=None,
        help="nftables in-process (libnftables), nftables via the nft binary, iptables, all"
        " three, or none (the API rows only); default: all, with --quick libnftables",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions and rounds, libnftables only (a few minutes)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few routers, one repetition: only whether the bench runs (figures meaningless)",
    )
    parser.add_argument("--no-api", action="store_true", help="skip the `cthm serve` rows")
    parser.add_argument(
        "--no-neutron",
        action="store_true",
        help="skip Neutron's and cthm's L3 agent extensions (scripts/bench_neutron.py)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (progress to stderr)"
    )
    parser.add_argument(
        "--only",
        choices=sorted(ONLY),
        help="only that agent-side scenario, after one cold start of its fleet (no API, no"
        " Neutron rows; the other keys stay null): for iterating on the agent's change path",
    )
    parser.add_argument(
        "--kernel-processes",
        type=int,
        default=None,
        metavar="N",
        help="the in-process agent's kernel-worker processes (libnftables runner); 0: none"
        f" [the product's default here: {default_process_count()}]",
    )
    args = parser.parse_args()
    if args.kernel_processes is not None:
        KERNEL_PROCESSES[0] = args.kernel_processes
    # The benchmark empties tables between repetitions on purpose; only errors are worth
    # printing beside the table.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("cthm").setLevel(logging.ERROR)
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it creates network namespaces)")
    runner = args.runner or ("libnftables" if args.quick or args.tiny else "all")
    kinds = {"all": list(RUNNERS), "none": []}.get(runner, [runner])
    sizes = TINY if args.tiny else QUICK if args.quick else FULL
    human = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=human, flush=True)

    if args.tiny:
        fleets = ", ".join(f"{count} x {size}" for _, count, size in sizes.fleets)
        say(f"--tiny: the rows name the full sizes; the fleets are {fleets}")

    out: dict[str, Any] = {key.name: None for key in KEYS}
    out.update(dict.fromkeys(bench_neutron.KEYS))
    neutron: str | None = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.only or args.no_neutron or importlib.util.find_spec("neutron") is None:
        say("the extensions' rows skipped (--no-neutron, or no `neutron` package)")
        neutron = None
    api = not args.no_api and args.only is None
    code = run_measured(
        out, lambda stack: run(stack, out, kinds, sizes, api, say, neutron, args.only)
    )
    out["quick"] = args.quick
    if args.tiny:
        out["tiny"] = True  # the keys name sizes the fleets do not have
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    return code


if __name__ == "__main__":
    sys.exit(main())
