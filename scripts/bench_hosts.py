#!/usr/bin/env python3
"""cthm several-hosts benchmark (`make bench-hosts`, issue 12): node agents against a real API
and the real kernel, each agent a FakeHost (its own mount namespace and /run/netns).

Setup (not timed): N hosts, R router namespaces per host (one netns each), B bindings per
router, loaded into a fresh database; one more router holding BIG bindings on the first host;
`cthm serve --no-agent` on that database; an agent token per host (limited to it).

Measured:
- cold start: from starting the N agents until the API shows every router ACTIVE (each host
  reported it applied and verified at its current revision); then every table is read back from
  the kernel and compared with the bindings (not timed).
- API write -> remote kernel: POST (then DELETE) one binding on the BIG router, timed until
  `nft monitor` in that router's namespace prints the line by which the kernel holds (no
  longer holds) the port (bench_support.holds_port, lacks_port). p50/p99 over --writes writes
  (targets: p50 <= 20 ms, p99 <= 100 ms).
- work on the other agents during those writes: their reconcile counts (applied, noop, failed,
  removed, drift) and watch events, from GET /v2.0/agents before and after (target: none).
- the API's memory (VmRSS, VmHWM) with every agent watching.

Every namespace it creates carries a unique prefix and is deleted by exactly its name at the
end, also on failure, Ctrl-C or SIGTERM. Prints human lines, then one JSON summary.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_support import (
    Namespaces,
    NftMonitor,
    holds_port,
    lacks_port,
    percentile,
    run_reported,
)

from cthm.domain import (
    HelperBinding,
    HelperCatalog,
    Protocol,
    assignments_for,
    new_binding,
    new_router,
)
from cthm.netfilter import NftablesBackend, make_runner
from cthm.netfilter.render import desired_table
from cthm.store import Store
from cthm.testing import FakeHost
from cthm.testing.service import ServerProcess

HELPERS = [
    ("ftp", Protocol.TCP),
    ("tftp", Protocol.UDP),
    ("sip", Protocol.UDP),
    ("irc", Protocol.TCP),
]
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0
COUNT_KEYS = ("applied", "noop", "failed", "removed", "drift")
WRITE_TIMEOUT = 5.0  # one write not in the kernel after this: counted as a timeout
POLL = 0.25
# No quota: the loaded routers hold more bindings than the default quotas allow new writes.
SERVE_ARGS = (
    "--no-agent",
    *("--quota-bindings-per-router", "-1"),
    *("--quota-bindings-per-project", "-1"),
)

log = logging.getLogger("bench_hosts")


@dataclass
class RouterPlan:
    id: str
    name: str
    namespace: str
    host: int
    size: int
    bindings: list[HelperBinding] = field(default_factory=list)


# --- the API -----------------------------------------------------------------------------------


def api_client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30.0, headers=server.auth_headers())


def agent_token(client: httpx.Client, host: str) -> str:
    body = {"auth_token": {"project_id": "agents", "roles": ["agent"], "host": host}}
    response = client.post("/v2.0/auth_tokens", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"token for {host}: {response.status_code} {response.text}")
    token: str = response.json()["auth_token"]["token"]
    return token


def router_statuses(client: httpx.Client) -> dict[str, tuple[str, str]]:
    response = client.get(
        "/v2.0/routers",
        params=[
            ("fields", "id"),
            ("fields", "status"),
            ("fields", "status_reason"),
            ("limit", "10000"),
        ],
    )
    response.raise_for_status()
    return {r["id"]: (r["status"], r.get("status_reason", "")) for r in response.json()["routers"]}


def agents_by_host(client: httpx.Client) -> dict[str, dict[str, Any]]:
    response = client.get("/v2.0/agents")
    response.raise_for_status()
    return {a["host"]: a for a in response.json()["agents"]}


def work_of(agent: Mapping[str, Any]) -> dict[str, int]:
    """An agent's reconcile counts and watch events, as its last report says."""
    config = agent.get("configurations") or {}
    counts = config.get("counts") or {}
    watch = config.get("watch") or {}
    work = {key: int(counts.get(key) or 0) for key in COUNT_KEYS}
    work["watch_events"] = int(watch.get("events") or 0)
    return work


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


# --- the benchmark -----------------------------------------------------------------------------


@dataclass
class Args:
    agents: int
    routers: int
    bindings: int
    big: int
    writes: int
    report_interval: float
    timeout: float
    json_file: Path | None
    keep: bool


def load(data_dir: Path, plans: list[RouterPlan], catalog: HelperCatalog) -> None:
    """The routers and their bindings, straight into the database the API will open (the
    setup is not what is measured; the measured writes go through the API)."""
    store = Store(f"sqlite:///{data_dir / 'cthm.db'}")
    try:
        store.migrate()
        for plan in plans:
            with store.unit_of_work() as repo:
                router = repo.add_router(
                    new_router(name=plan.name, project_id="bench", namespace=plan.namespace)
                )
                plan.id = router.id
                for b in range(plan.size):
                    helper, protocol = HELPERS[b % len(HELPERS)]
                    plan.bindings.append(
                        repo.add_binding(
                            new_binding(
                                catalog, router, protocol=protocol, port=1000 + b, helper=helper
                            )
                        )
                    )
    finally:
        store.close()


def verify_kernel(plans: list[RouterPlan], catalog: HelperCatalog) -> list[str]:
    """Every router's table as the kernel holds it, against its bindings: the differing ones."""
    backend = NftablesBackend(make_runner("libnftables"))
    bad = []
    try:
        for plan in plans:
            table = backend.read(plan.namespace)
            want = desired_table(assignments_for(catalog, plan.bindings), None)
            if (
                table is None
                or table.owner is None
                or table.assignments != want.assignments
                or table.garbage
            ):
                bad.append(plan.namespace)
    finally:
        backend.close()
    return bad


@dataclass
class WriteTimes:
    add_ms: list[float] = field(default_factory=list)  # POST sent -> kernel holds the port
    del_ms: list[float] = field(default_factory=list)  # DELETE sent -> kernel lacks it
    api_ms: list[float] = field(default_factory=list)  # request sent -> API answered
    timeouts: int = 0


def measure_writes(client: httpx.Client, monitor: NftMonitor, url: str, writes: int) -> WriteTimes:
    """`writes` times: POST a binding, time until the kernel holds its port; DELETE it, time
    until the kernel no longer does."""
    times = WriteTimes()
    for i in range(writes):
        port = 30000 + i
        monitor.drain()
        start = time.perf_counter()
        response = client.post(
            url, json={"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
        )
        times.api_ms.append((time.perf_counter() - start) * 1000)
        if response.status_code != 201:
            raise RuntimeError(f"POST binding: {response.status_code} {response.text}")
        binding_id = response.json()["conntrack_helper"]["id"]
        seen = monitor.wait_for(functools.partial(holds_port, port), start, WRITE_TIMEOUT)
        if seen is None:
            times.timeouts += 1
        else:
            times.add_ms.append((seen - start) * 1000)
        time.sleep(0.05)  # the agent reports its status: the next write meets a quiet agent
        monitor.drain()
        start = time.perf_counter()
        response = client.delete(f"{url}/{binding_id}")
        times.api_ms.append((time.perf_counter() - start) * 1000)
        if response.status_code != 204:
            raise RuntimeError(f"DELETE binding: {response.status_code} {response.text}")
        seen = monitor.wait_for(functools.partial(lacks_port, port), start, WRITE_TIMEOUT)
        if seen is None:
            times.timeouts += 1
        else:
            times.del_ms.append((seen - start) * 1000)
        time.sleep(0.05)
    return times


def _watch_once(server: ServerProcess, host: str, since: int, seen: dict[str, Any]) -> None:
    """One long poll of the watch; when it answered and with what, into `seen`."""
    with api_client(server) as watcher:
        params: dict[str, str | int | float] = {
            "since": since,
            "host": host,
            "timeout": WRITE_TIMEOUT,
        }
        response = watcher.get("/v2.0/watch", params=params)
        seen["at"] = time.perf_counter()
        seen["body"] = response.json()


def measure_watch(
    server: ServerProcess, client: httpx.Client, url: str, host: str, writes: int
) -> list[float]:
    """The API's share of a remote write: POST sent -> a waiting watch of `host` answers with
    the change (each binding is deleted again, untimed)."""
    answered: list[float] = []
    head = client.get(f"/v2.0/hosts/{host}/routers").json()["revision"]
    for i in range(writes):
        seen: dict[str, Any] = {}
        thread = threading.Thread(target=_watch_once, args=(server, host, head, seen))
        thread.start()
        time.sleep(0.1)  # the watch is waiting
        start = time.perf_counter()
        response = client.post(
            url, json={"conntrack_helper": {"protocol": "tcp", "port": 40000 + i, "helper": "ftp"}}
        )
        thread.join(WRITE_TIMEOUT + 5)
        if response.status_code != 201 or not seen.get("body", {}).get("events"):
            raise RuntimeError(f"watch: {response.status_code} {response.text} {seen}")
        answered.append((seen["at"] - start) * 1000)
        client.delete(f"{url}/{response.json()['conntrack_helper']['id']}").raise_for_status()
        params: dict[str, str | int | float] = {
            "since": seen["body"]["revision"],
            "host": host,
            "timeout": 1,
        }
        head = client.get("/v2.0/watch", params=params).json()["revision"]
        time.sleep(0.1)  # the agent applied both
    return answered


def run(args: Args, stack: ExitStack, out: dict[str, Any]) -> None:
    catalog = HelperCatalog()
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="cthm-bench-hosts-"))
        print(f"work directory (kept): {work}", flush=True)
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cthm-bench-hosts-")))
    data_dir, log_dir = work / "data", work / "logs"
    data_dir.mkdir()
    namespaces = Namespaces("cthmh")
    stack.callback(_cleanup_namespaces, namespaces, out)

    # Setup: namespaces, database, API, hosts.
    t = time.perf_counter()
    labels = [f"h{h}r{r}" for h in range(args.agents) for r in range(args.routers)] + ["big"]
    names = namespaces.create(labels)
    plans = []
    for label, name in zip(labels, names, strict=True):
        on = 0 if label == "big" else int(label[1:].split("r")[0])
        size = args.big if label == "big" else args.bindings
        plans.append(RouterPlan(id="", name=label, namespace=name, host=on, size=size))
    print(f"setup: {len(names)} namespaces in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    load(data_dir, plans, catalog)
    total_bindings = sum(len(p.bindings) for p in plans)
    print(
        f"setup: {len(plans)} routers, {total_bindings} bindings loaded in "
        f"{time.perf_counter() - t:.1f} s",
        flush=True,
    )
    server = stack.enter_context(ServerProcess(data_dir, log_dir, args=SERVE_ARGS))
    client = stack.enter_context(api_client(server))
    hosts: list[FakeHost] = []
    t = time.perf_counter()
    for index in range(args.agents):
        host = FakeHost(f"bench-{index}", log_dir / f"host-{index}")
        stack.callback(_close_host, host)
        hosts.append(host.start())
        for plan in plans:
            if plan.host == index:
                host.add_namespace(plan.namespace, plan.namespace)
    print(
        f"setup: {args.agents} hosts, namespaces exposed in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    token_files = []
    for host in hosts:
        path = work / f"{host.name}.token"
        path.touch(mode=0o600)
        path.write_text(agent_token(client, host.name), encoding="ascii")
        token_files.append(path)
    out["size"] = {
        "agents": args.agents,
        "routers_per_agent": args.routers,
        "bindings_per_router": args.bindings,
        "big_router_bindings": args.big,
        "routers": len(plans),
        "bindings": total_bindings,
    }

    # Cold start.
    t0 = time.perf_counter()
    agents = [
        host.start_agent(
            server.url,
            path,
            report_interval=args.report_interval,
            # No periodic resync in the measured minutes: it would be work on every agent.
            resync_interval=86400,
        )
        for host, path in zip(hosts, token_files, strict=True)
    ]
    registered_s = None
    statuses: dict[str, tuple[str, str]] = {}
    deadline = t0 + args.timeout
    while True:
        now = time.perf_counter()
        if registered_s is None and len(agents_by_host(client)) >= args.agents:
            registered_s = now - t0
        statuses = router_statuses(client)
        active = sum(1 for s, _ in statuses.values() if s == "ACTIVE")
        if active == len(plans):
            break
        dead = [a for a in agents if not a.alive()]
        if dead:
            raise RuntimeError(f"an agent exited: {dead[0].log_tail()}")
        if now > deadline:
            pending = [(i, s) for i, s in statuses.items() if s[0] != "ACTIVE"][:5]
            raise RuntimeError(
                f"cold start: {active}/{len(plans)} ACTIVE after {args.timeout:.0f} s; e.g. "
                f"{pending}\n{agents[0].log_tail(2000)}"
            )
        time.sleep(POLL)
    cold_s = time.perf_counter() - t0
    print(
        f"cold start: {len(plans)} routers ACTIVE on {args.agents} agents in {cold_s:.2f} s "
        f"(all agents registered after {registered_s or 0:.2f} s; poll {POLL} s)",
        flush=True,
    )
    t = time.perf_counter()
    bad = verify_kernel(plans, catalog)
    print(
        f"cold start: kernel read back, {len(plans) - len(bad)}/{len(plans)} tables as desired "
        f"({time.perf_counter() - t:.1f} s)",
        flush=True,
    )
    out["cold_start"] = {
        "seconds": round(cold_s, 3),
        "agents_registered_seconds": None if registered_s is None else round(registered_s, 3),
        "kernel_verified": len(plans) - len(bad),
        "kernel_mismatch": bad[:20],
    }
    out["api_memory_after_cold_start_kib"] = memory_kib(_pid(server))

    # Writes on the big router, watched in its kernel namespace.
    big = plans[-1]
    settle = 2 * args.report_interval + 1.0
    time.sleep(settle)  # every agent's report after its last reconcile
    before = {h: work_of(a) for h, a in agents_by_host(client).items()}
    monitor = NftMonitor(big.namespace)
    stack.callback(monitor.close)
    time.sleep(0.3)  # `nft monitor` subscribed
    url = f"/v2.0/routers/{big.id}/conntrack_helpers"
    times = measure_writes(client, monitor, url, args.writes)
    monitor.close()
    add_ms, del_ms, timeouts = times.add_ms, times.del_ms, times.timeouts
    all_ms = add_ms + del_ms
    latency: dict[str, Any] = {
        "writes": 2 * args.writes,
        "timeouts": timeouts,
        "router_bindings": args.big,
    }
    for label, samples in (
        ("add", add_ms),
        ("delete", del_ms),
        ("all", all_ms),
        ("api_answer", times.api_ms),
    ):
        if samples:
            latency[label] = {
                "p50_ms": round(statistics.median(samples), 2),
                "p99_ms": round(percentile(samples, 99), 2),
                "max_ms": round(max(samples), 2),
                "n": len(samples),
            }
    # Part of every remote write: the agent reads the router's desired state (its host view).
    view_ms = []
    for _ in range(10):
        start = time.perf_counter()
        client.get(f"/v2.0/hosts/{hosts[big.host].name}/routers/{big.id}").raise_for_status()
        view_ms.append((time.perf_counter() - start) * 1000)
    latency["host_view_get_p50_ms"] = round(statistics.median(view_ms), 2)
    watch_ms = measure_watch(server, client, url, hosts[big.host].name, 10)
    latency["watch_answer_p50_ms"] = round(statistics.median(watch_ms), 2)
    out["write_to_remote_kernel"] = latency
    if all_ms:
        p50, p99 = latency["all"]["p50_ms"], latency["all"]["p99_ms"]
        print(
            f"write -> remote kernel ({args.big} bindings, {len(all_ms)} writes): p50 {p50:.1f} ms"
            f" (target {TARGET_P50_MS:.0f}){' MISSED' if p50 > TARGET_P50_MS else ''},"
            f" p99 {p99:.1f} ms (target {TARGET_P99_MS:.0f})"
            f"{' MISSED' if p99 > TARGET_P99_MS else ''}; add p50"
            f" {latency['add']['p50_ms'] if add_ms else '-'} ms, delete p50"
            f" {latency['delete']['p50_ms'] if del_ms else '-'} ms; the API answered in p50"
            f" {latency['api_answer']['p50_ms']} ms of it, GET of the router's host view p50"
            f" {latency['host_view_get_p50_ms']} ms, a watch of the host answered p50"
            f" {latency['watch_answer_p50_ms']} ms after the POST was sent; timeouts {timeouts}",
            flush=True,
        )

    # Work on the other agents, from their reports after the writes.
    time.sleep(settle)
    after = {h: work_of(a) for h, a in agents_by_host(client).items()}
    target_host = hosts[big.host].name
    others: dict[str, dict[str, int]] = {}
    for host in hosts:
        if host.name == target_host:
            continue
        b, a = before.get(host.name, {}), after.get(host.name, {})
        diff = {k: a.get(k, 0) - b.get(k, 0) for k in (*COUNT_KEYS, "watch_events")}
        others[host.name] = diff
    total_other = {k: sum(d[k] for d in others.values()) for k in (*COUNT_KEYS, "watch_events")}
    own = {
        k: after.get(target_host, {}).get(k, 0) - before.get(target_host, {}).get(k, 0)
        for k in (*COUNT_KEYS, "watch_events")
    }
    out["other_agents_work"] = {"total": total_other, "per_host": others}
    out["target_agent_work"] = own
    print(
        f"work on the {len(others)} agents not hosting the router: {total_other} (target: none);"
        f" on its own agent: {own}",
        flush=True,
    )

    mem = memory_kib(_pid(server))
    out["api_memory_kib"] = mem
    alive = sum(1 for a in agents_by_host(client).values() if a.get("alive"))
    print(
        f"API memory with {alive} agents watching: VmRSS {mem.get('VmRSS', 0) / 1024:.1f} MiB,"
        f" peak VmHWM {mem.get('VmHWM', 0) / 1024:.1f} MiB",
        flush=True,
    )


def _pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def _close_host(host: FakeHost) -> None:
    # SIGTERM to every agent of the host first, so they stop in parallel.
    for agent in host.agents:
        if agent.alive():
            agent.process.send_signal(signal.SIGTERM)
    host.close()


def _cleanup_namespaces(namespaces: Namespaces, out: dict[str, Any]) -> None:
    t = time.perf_counter()
    count = len(namespaces.factory.created)
    left = namespaces.cleanup()
    out["cleanup"] = {
        "namespaces": count,
        "left": left,
        "seconds": round(time.perf_counter() - t, 1),
    }
    print(f"cleanup: {count - len(left)}/{count} namespaces deleted", flush=True)
    if left:
        print(f"warning: could not delete namespaces {left}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10, help="hosts, one agent each")
    parser.add_argument("--routers", type=int, default=100, help="routers per agent")
    parser.add_argument("--bindings", type=int, default=10, help="bindings per router")
    parser.add_argument("--big", type=int, default=1000, help="bindings of the written router")
    parser.add_argument("--writes", type=int, default=50, help="adds (and as many deletes)")
    parser.add_argument("--report-interval", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="cold start bound, s")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the work directory (logs, database)"
    )
    ns = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (it creates network namespaces)")
    for name in ("agents", "routers", "bindings", "writes"):
        if getattr(ns, name) < 1:
            raise SystemExit(f"--{name} must be 1 or more")
    if ns.agents * ns.routers > 5000 or ns.bindings > 1000 or not 1 <= ns.big <= 5000:
        raise SystemExit("too big: at most 5000 routers, 1000 bindings each, --big 1..5000")
    args = Args(
        ns.agents,
        ns.routers,
        ns.bindings,
        ns.big,
        ns.writes,
        ns.report_interval,
        ns.timeout,
        ns.json,
        ns.keep_logs,
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    def run_checked(stack: ExitStack, out: dict[str, Any]) -> bool:
        run(args, stack, out)
        return True

    return run_reported(run_checked, args.json_file)


if __name__ == "__main__":
    sys.exit(main())
