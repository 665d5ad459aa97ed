#!/usr/bin/env python3
"""cthm benchmark (`make bench`): the agent against the real kernel, in namespaces it creates.

Scenarios (issue 3): cold sync of K routers x N bindings from an empty kernel (100x10, 10x1000),
adding and deleting one binding on a router holding N=1000, and a no-op resync of 100 routers.
Every measured run is verified by reading each router's table back from the kernel.
Prints medians over repeated runs next to the targets and Neutron's measured figures.
Several hosts (node agents against `cthm serve --no-agent`, issue 12) are measured by
scripts/bench_hosts.py, which `make bench` runs next (alone: `make bench-hosts`).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import update

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import (
    Assignment,
    HelperBinding,
    HelperCatalog,
    ListQuery,
    Protocol,
    Router,
    assignments_for,
    new_binding,
    new_router,
)
from cthm.netfilter import IptablesBackend, NftablesBackend, make_runner
from cthm.store import Store
from cthm.store.tables import BindingRow, RouterRow
from cthm.testing import NamespaceFactory

HELPERS = [
    ("ftp", Protocol.TCP),
    ("tftp", Protocol.UDP),
    ("sip", Protocol.UDP),
    ("irc", Protocol.TCP),
]


@dataclass
class Row:
    scenario: str
    median_ms: float
    runs: int
    target_ms: float | None
    neutron_ms: float | None


class Bench:
    def __init__(self, runner_kind: str, workdir: Path, namespaces: NamespaceFactory) -> None:
        self.catalog = HelperCatalog()
        self.store = Store(f"sqlite:///{workdir / 'bench.db'}")
        self.store.migrate()
        self.backend: NftablesBackend | IptablesBackend = (
            IptablesBackend()
            if runner_kind == "iptables"
            else NftablesBackend(make_runner(runner_kind))
        )
        # No orphan sweep: the benchmark must never touch namespaces it did not create.
        self.agent = Agent(
            LocalStoreSource(self.store), self.backend, self.catalog, workers=2, sweep_orphans=False
        )
        self.namespaces = namespaces
        self.routers: dict[str, Router] = {}

    def close(self) -> None:
        self.backend.close()
        self.store.close()

    def add_routers(self, label: str, count: int, bindings_each: int) -> list[Router]:
        created = []
        for index in range(count):
            namespace = self.namespaces.create(f"{label}{index}")
            with self.store.unit_of_work() as repo:
                router = repo.add_router(
                    new_router(name=f"{label}{index}", project_id="bench", namespace=namespace)
                )
                for b in range(bindings_each):
                    helper, protocol = HELPERS[b % len(HELPERS)]
                    repo.add_binding(
                        new_binding(
                            self.catalog, router, protocol=protocol, port=1000 + b, helper=helper
                        )
                    )
            self.routers[router.id] = router
            created.append(router)
        return created

    def desired(self, router_id: str) -> list[Assignment]:
        with self.store.unit_of_work(write=False) as repo:
            bindings: list[HelperBinding] = repo.list_bindings(ListQuery(), router_id)
        return assignments_for(self.catalog, bindings)

    def verify(self, routers: list[Router]) -> None:
        for router in routers:
            have = self.backend.read(router.namespace)
            want = self.backend.desired(self.desired(router.id))
            if have != want:
                raise SystemExit(f"VERIFY FAILED for {router.namespace}")

    def wipe(self, routers: list[Router]) -> None:
        """Empty kernel and PENDING statuses: the state a cold start finds."""
        for router in routers:
            self.backend.delete(router.namespace)
        with self.store.unit_of_work() as repo:
            session = repo._session  # bench-only reset, outside the product's API
            ids = [r.id for r in routers]
            session.execute(update(RouterRow).where(RouterRow.id.in_(ids)).values(status="PENDING"))
            session.execute(
                update(BindingRow).where(BindingRow.router_id.in_(ids)).values(status="PENDING")
            )

    def sync(self, routers: list[Router]) -> None:
        """All routers through the agent's queue and workers, until settled."""
        self.agent.enqueue(r.id for r in routers)
        if not self.agent.wait_settled(timeout=120):
            raise SystemExit("agent did not settle")


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def run(runner_kind: str, quick: bool) -> list[Row]:
    reps = 3 if quick else 7
    rows: list[Row] = []
    namespaces = NamespaceFactory(prefix=f"cthmb{os.getpid() % 10000}-")
    with tempfile.TemporaryDirectory(prefix="cthm-bench-") as tmp:
        bench = Bench(runner_kind, Path(tmp), namespaces)
        bench.agent.start()
        try:
            small = bench.add_routers("s", 100, 10)
            big = bench.add_routers("b", 10, 1000)
            bench.sync(small + big)
            samples = []
            for _ in range(reps):
                bench.wipe(small)
                samples.append(timed(lambda: bench.sync(small)))
                bench.verify(small)
            rows.append(
                Row("cold sync 100 routers x 10", statistics.median(samples), reps, 1000, 5900)
            )

            samples = []
            for _ in range(reps):
                bench.wipe(big)
                samples.append(timed(lambda: bench.sync(big)))
                bench.verify(big)
            rows.append(
                Row("cold sync 10 routers x 1000", statistics.median(samples), reps, None, None)
            )

            target = big[0]
            add_samples, del_samples = [], []
            for i in range(reps * 3):
                with bench.store.unit_of_work() as repo:
                    binding = repo.add_binding(
                        new_binding(
                            bench.catalog, target, protocol="tcp", port=30000 + i, helper="ftp"
                        )
                    )
                add_samples.append(timed(lambda: bench.sync([target])))
                bench.verify([target])
                with bench.store.unit_of_work() as repo:
                    repo.delete_binding(target.id, binding.id)
                del_samples.append(timed(lambda: bench.sync([target])))
                bench.verify([target])
            rows.append(
                Row(
                    "add one binding at N=1000",
                    statistics.median(add_samples),
                    len(add_samples),
                    20,
                    380,
                )
            )
            rows.append(
                Row(
                    "delete one binding at N=1000",
                    statistics.median(del_samples),
                    len(del_samples),
                    20,
                    None,
                )
            )

            samples = []
            before = bench.agent.counts["applied"]
            for _ in range(reps):
                samples.append(timed(lambda: bench.sync(small)))
            if bench.agent.counts["applied"] != before:
                raise SystemExit("a no-op resync wrote to the kernel")
            bench.verify(small)
            rows.append(
                Row("no-op resync 100 routers", statistics.median(samples), reps, 500, None)
            )
        finally:
            bench.agent.stop()
            bench.close()
            left = namespaces.cleanup()
            if left:
                print(f"warning: could not delete namespaces {left}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--runner",
        choices=["libnftables", "subprocess", "iptables", "all"],
        default="all",
        help="nftables in-process (libnftables), nftables via the nft binary, or iptables",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    # The benchmark empties tables between repetitions on purpose; the agent rightly calls
    # that drift. Only errors are worth printing beside the table.
    logging.getLogger("cthm").setLevel(logging.ERROR)
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it creates network namespaces)")
    kinds = ["libnftables", "subprocess", "iptables"] if args.runner == "all" else [args.runner]
    print(
        f"{'runner':<12} {'scenario':<32} {'median':>10} {'runs':>5} {'target':>9} "
        f"{'Neutron':>9} {'vs Neutron':>10}"
    )
    for kind in kinds:
        for row in run(kind, args.quick):
            target = f"{row.target_ms:.0f} ms" if row.target_ms else "-"
            neutron = f"{row.neutron_ms:.0f} ms" if row.neutron_ms else "-"
            ratio = f"{row.neutron_ms / row.median_ms:.0f}x" if row.neutron_ms else "-"
            flag = " MISSED" if row.target_ms and row.median_ms > row.target_ms else ""
            print(
                f"{kind:<12} {row.scenario:<32} {row.median_ms:>7.1f} ms {row.runs:>5} "
                f"{target:>9} {neutron:>9} {ratio:>10}{flag}"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
