#!/usr/bin/env python3
"""cthm API write benchmark (`make bench-api`, issue 13): creates per second and their latency
with concurrent clients, on SQLite, on PostgreSQL, and on two API replicas sharing PostgreSQL.

What is created: conntrack helper bindings (POST /v2.0/routers/{id}/conntrack_helpers, tcp,
ftp), one router per client made beforehand (not timed); each client writes its own router's
ports, so no create conflicts with another. Each measured create is one request answered 201:
the binding, its audit event and its change-log entry committed in one transaction.

The clients are threads each speaking HTTP/1.1 on one keep-alive connection by hand (RawClient:
request bytes from a prefix built once, the answer parsed just enough); every answer must be a
201 whose body holds the binding's id and port. httpx, used before, cost the bench ~0.9 ms of
CPU per create, a fifth of all the CPU a create took on the 2 cores; RawClient ~0.1 ms.

Configurations (each on a fresh database, every server `cthm serve --no-agent`, quotas -1;
`--workers N`: every server with N API processes on its socket, `cthm serve --workers N`):
- sqlite: one server on its default database (`<data dir>/cthm.db`, WAL, synchronous FULL).
- postgresql: one server on a database of a throwaway cluster (cthm.testing.PostgresCluster:
  its own temp dir, 127.0.0.1, a free port; never an existing cluster); fsync is turned on
  (the test cluster runs without it) so that a commit is as durable as SQLite's.
- postgresql x2: two servers on one database, the clients split across them (as behind a load
  balancer); the throughput is that of both together.

Per configuration: a warm-up (every client's connection and the server's first requests),
then the measured creates, all clients released together; the rate is all creates over the
wall time from the release until the last answer; p50/p99 are per request. Afterwards the
stored bindings are counted through the API (every 201 must be there). Servers are stopped by
their pid, the cluster by its own, temp dirs removed, also on Ctrl-C or SIGTERM. The machine
may be shared: the bench's own CPU time (the clients) and the servers' (with their workers')
are printed, to judge how much of the two cores each took. Prints human lines, then one JSON
summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_support import percentile, run_reported

from cthm.testing import PostgresCluster, ServerProcess

TARGETS = {"sqlite": 300.0, "postgresql": 500.0}  # creates per second, 8 clients, 2 cores
SERVE_ARGS = (
    "--no-agent",
    *("--quota-bindings-per-router", "-1"),
    *("--quota-bindings-per-project", "-1"),
)
REQUEST_TIMEOUT = 30.0
FIRST_PORT = 1
MAX_PORT = 65535
PAGE = 10000  # the API's largest page


@dataclass
class Args:
    configs: list[str]
    clients: int
    creates: int
    warmup: int
    json_file: Path | None
    keep: bool
    no_fsync: bool
    workers: int


@dataclass
class Phase:
    """What the clients of one phase did."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """User + system CPU time of a process; reaped: plus that of its children it waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a PostgreSQL postmaster, its living backends and those gone (reaped by it):
    the difference of two readings is the database's work in between."""
    total = cpu_seconds(pid, reaped=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                total += cpu_seconds(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # gone meanwhile: counted in the postmaster's reaped time
    return total


def make_routers(url: str, token: str, count: int) -> list[str]:
    with httpx.Client(base_url=url, headers=_headers(token), timeout=REQUEST_TIMEOUT) as client:
        ids = []
        for index in range(count):
            response = client.post("/v2.0/routers", json={"router": {"name": f"bench-{index}"}})
            if response.status_code != 201:
                raise RuntimeError(f"POST router: {response.status_code} {response.text}")
            ids.append(response.json()["router"]["id"])
        return ids


class RawClient:
    """One keep-alive HTTP/1.1 connection spoken by hand: the request bytes are built from a
    prefix made once, the answer is parsed just enough (status, Content-Length, body). httpx
    cost ~0.9 ms of CPU per request, a fifth of a create's whole cost on these 2 cores: the
    figure measured the client as much as the server."""

    def __init__(self, url: str, token: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = f"Host: {host}:{port}\r\nX-Auth-Token: {token}\r\n".encode()
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """The answer's status and body; raises OSError or ValueError on a broken answer."""
        extra = b"Content-Type: application/json\r\n" if body else b""
        self.sock.sendall(
            b"%s %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n%s"
            % (method.encode(), path.encode(), self.head, extra, len(body), body)
        )
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._receive()
        lines = self.buffer[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise ValueError(f"an answer without Content-Length: {lines[0]!r}")
        total = end + 4 + length
        while len(self.buffer) < total:
            self._receive()
        answer, self.buffer = self.buffer[end + 4 : total], self.buffer[total:]
        return status, answer

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk


def drive(
    urls: list[str], token: str, routers: list[str], first_port: int, per_client: int
) -> Phase:
    """Every client (a thread, its own keep-alive connection, client i to urls[i % n]) POSTs
    `per_client` bindings on its router, ports from `first_port`, released together. An answer
    counts as created only if it is a 201 whose body holds the binding's id and port."""
    phase = Phase()
    lock = threading.Lock()
    ready = threading.Barrier(len(routers) + 1)

    def client_loop(index: int, router_id: str) -> None:
        samples: list[float] = []
        statuses: Counter[int] = Counter()
        failure = ""
        path = f"/v2.0/routers/{router_id}/conntrack_helpers"
        client = RawClient(urls[index % len(urls)], token)
        try:
            client.request("GET", "/healthz")  # the connection is open before the release
            ready.wait()
            for port in range(first_port, first_port + per_client):
                body = b'{"conntrack_helper":{"protocol":"tcp","port":%d,"helper":"ftp"}}' % port
                start = time.perf_counter()
                status, answer = client.request("POST", path, body)
                samples.append((time.perf_counter() - start) * 1000)
                if status == 201 and not _created(answer, port):
                    status = 0  # a 201 without the binding: counted as a failure
                statuses[status] += 1
                if status != 201 and not failure:
                    failure = f"{status} {answer[:200]!r}"
        except (OSError, ValueError, threading.BrokenBarrierError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        with lock:
            phase.latencies_ms.extend(samples)
            phase.statuses.update(statuses)
            if failure:
                phase.failures.append(failure)

    threads = [
        threading.Thread(target=client_loop, args=(i, r), daemon=True)
        for i, r in enumerate(routers)
    ]
    for thread in threads:
        thread.start()
    ready.wait(timeout=REQUEST_TIMEOUT)
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - start
    return phase


def _created(answer: bytes, port: int) -> bool:
    try:
        binding = json.loads(answer)["conntrack_helper"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(binding, dict) and bool(binding.get("id")) and binding.get("port") == port


def stored_bindings(url: str, token: str, routers: list[str]) -> int:
    """The bindings the database holds on `routers`, listed through the API page by page."""
    total = 0
    with httpx.Client(base_url=url, headers=_headers(token), timeout=REQUEST_TIMEOUT) as client:
        for router_id in routers:
            marker = None
            while True:
                params: dict[str, str | int] = {"fields": "id", "limit": PAGE}
                if marker is not None:
                    params["marker"] = marker
                response = client.get(f"/v2.0/routers/{router_id}/conntrack_helpers", params=params)
                response.raise_for_status()
                page = response.json()["conntrack_helpers"]
                total += len(page)
                if len(page) < PAGE:
                    break
                marker = page[-1]["id"]
    return total


def _headers(token: str) -> dict[str, str]:
    return {"X-Auth-Token": token}


def measure(
    label: str,
    database: str,
    servers: list[ServerProcess],
    token: str,
    args: Args,
    database_pid: int | None = None,
) -> dict[str, Any]:
    """Warm-up, then the measured creates through `servers`; the result, printed too.
    database_pid: PostgreSQL's postmaster, whose CPU time (with its backends') is reported."""
    urls = [s.url for s in servers]
    routers = make_routers(urls[0], token, args.clients)
    warm = drive(urls, token, routers, FIRST_PORT, args.warmup)
    if warm.failures:
        raise RuntimeError(f"{label}: warm-up failed: {warm.failures[0]}")
    pids = [s.process.pid for s in servers if s.process is not None]
    # With --workers the API runs in the server's children: its whole tree is counted.
    server_cpu = [tree_cpu_seconds(pid) for pid in pids]
    database_cpu = tree_cpu_seconds(database_pid) if database_pid else 0.0
    client_cpu = time.process_time()
    phase = drive(urls, token, routers, FIRST_PORT + args.warmup, args.creates)
    client_cpu = time.process_time() - client_cpu
    server_cpu = [
        tree_cpu_seconds(pid) - before for pid, before in zip(pids, server_cpu, strict=True)
    ]
    if database_pid:
        database_cpu = tree_cpu_seconds(database_pid) - database_cpu
    created = phase.statuses.get(201, 0)
    expected = args.clients * (args.warmup + args.creates)
    stored = stored_bindings(urls[-1], token, routers)
    rate = created / phase.seconds if phase.seconds > 0 else 0.0
    target = TARGETS[database]
    result: dict[str, Any] = {
        "database": database,
        "replicas": len(servers),
        "workers_per_replica": args.workers,
        "clients": args.clients,
        "creates": created,
        "statuses": {str(code): n for code, n in sorted(phase.statuses.items())},
        "failures": phase.failures[:5],
        "seconds": round(phase.seconds, 3),
        "creates_per_second": round(rate, 1),
        "target_creates_per_second": target,
        "target_met": rate >= target,
        "p50_ms": round(statistics.median(phase.latencies_ms), 2),
        "p99_ms": round(percentile(phase.latencies_ms, 99), 2),
        "max_ms": round(max(phase.latencies_ms), 2),
        "stored_bindings": stored,
        "expected_bindings": expected,
        "server_cpu_seconds": [round(c, 2) for c in server_cpu],
        "client_cpu_seconds": round(client_cpu, 2),
    }
    if database_pid:
        result["database_cpu_seconds"] = round(database_cpu, 2)
    # Less noisy than the rate on a shared machine: what one create costs each party.
    per = 1000 / max(created, 1)
    result["cpu_ms_per_create"] = {
        "servers": round(sum(server_cpu) * per, 2),
        "clients": round(client_cpu * per, 2),
    }
    if database_pid:
        result["cpu_ms_per_create"]["postgresql"] = round(database_cpu * per, 2)
    print(
        f"{label}: {created} creates by {args.clients} clients in {phase.seconds:.2f} s ="
        f" {rate:.0f}/s (target {target:.0f}{'' if rate >= target else ', MISSED'}),"
        f" p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms,"
        f" max {result['max_ms']:.1f} ms; stored {stored}/{expected}"
        f"{'' if stored == expected else ' MISMATCH'}; CPU per create: server"
        f" {sum(server_cpu) * per:.1f} ms,"
        + (f" PostgreSQL {database_cpu * per:.1f} ms," if database_pid else "")
        + f" clients {client_cpu * per:.1f} ms"
        + (f"; not 201: {dict(phase.statuses)} e.g. {phase.failures[0]}" if phase.failures else ""),
        flush=True,
    )
    return result


def start_server(
    stack: ExitStack,
    data_dir: Path,
    log_dir: Path,
    workers: int,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """`cthm serve` (SERVE_ARGS, `workers` API processes), stopped by its pid when `stack`
    unwinds: registered before it starts, so that a start interrupted by Ctrl-C is stopped too."""
    server = ServerProcess(
        data_dir, log_dir, args=(*SERVE_ARGS, "--workers", str(workers)), env=env
    )
    stack.callback(stop_server, server)
    server.start()
    return server


def stop_server(server: ServerProcess) -> None:
    if server.process is None or server.process.poll() is not None:
        return
    try:
        server.stop()
    except AssertionError as exc:  # it ignored SIGTERM: stop() killed it
        print(f"warning: {str(exc)[:300]}", file=sys.stderr)


def run_sqlite(args: Args, work: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        server = start_server(stack, work / "sqlite", work / "logs-sqlite", args.workers)
        label = "sqlite" + _workers_label(args)
        return measure(label, "sqlite", [server], server.admin_token, args)


def run_postgresql(
    args: Args, work: Path, cluster: PostgresCluster, replicas: int
) -> dict[str, Any]:
    label = ("postgresql" if replicas == 1 else f"postgresql x{replicas}") + _workers_label(args)
    url = cluster.create_database(f"bench_{replicas}_{os.getpid()}")
    env = {"CTHM_DATABASE_URL": url}
    with ExitStack() as stack:
        servers = []
        # One after the other: the first makes the admin token (into its data directory);
        # each replica has its own data directory (and its lock), as on its own machine.
        for index in range(replicas):
            data_dir = work / f"pg{replicas}-{index}"
            servers.append(start_server(stack, data_dir, work / "logs-pg", args.workers, env))
        token = servers[0].admin_token
        result = measure(label, "postgresql", servers, token, args, database_pid=cluster.pid)
    for setting in ("fsync", "full_page_writes", "synchronous_commit"):
        result[setting] = cluster_setting(cluster, setting)
    return result


def _workers_label(args: Args) -> str:
    return f", {args.workers} workers each" if args.workers > 1 else ""


def cluster_setting(cluster: PostgresCluster, name: str) -> str:
    rows = cluster.admin_query(f"SHOW {name}")  # name: one of ours, not input
    return str(rows[0][0]) if rows else ""


def stop_cluster(cluster: PostgresCluster) -> None:
    """stop() (pg_ctl stop -m fast, by its pid); a postmaster whose start was interrupted
    before the cluster learnt its pid is stopped by the pid in its own postmaster.pid."""
    cluster.stop()
    pid_file = cluster.data_dir / "postmaster.pid"
    try:
        first = pid_file.read_text(encoding="ascii").split("\n")[0].strip()
    except OSError:
        return
    try:
        cmdline = Path(f"/proc/{first}/cmdline").read_bytes() if first.isdigit() else b""
    except OSError:
        return
    if str(cluster.data_dir).encode() not in cmdline:
        return  # gone, or a stale file naming another process now
    os.kill(int(first), signal.SIGINT)  # the postmaster's "fast" shutdown
    deadline = time.monotonic() + 30
    while Path(f"/proc/{first}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def start_cluster(stack: ExitStack, durable: bool) -> PostgresCluster:
    """A throwaway PostgreSQL cluster in a temp dir of its own (reachable by the postgres user),
    stopped by its pid, then removed, when `stack` unwinds. durable: fsync and full_page_writes
    on, as a production server runs (the test kit turns them off for speed), so that a commit
    is as durable as on SQLite (synchronous FULL)."""
    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cthm-bench-pg-")))
    cluster = PostgresCluster(base)
    stack.callback(stop_cluster, cluster)  # before start(): an interrupted start is stopped too
    cluster.start()
    if durable:
        for setting in ("fsync", "full_page_writes"):
            cluster.admin_execute(f"ALTER SYSTEM SET {setting} = on")
        cluster.admin_execute("SELECT pg_reload_conf()")
    return cluster


def run(args: Args, stack: ExitStack, out: dict[str, Any]) -> None:
    if args.keep:
        work = Path(tempfile.mkdtemp(prefix="cthm-bench-api-"))
        print(f"work directory (kept): {work}", flush=True)
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cthm-bench-api-")))
    out["size"] = {
        "clients": args.clients,
        "creates_per_client": args.creates,
        "warmup_per_client": args.warmup,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    results = out.setdefault("results", {})
    cluster = None
    for config in args.configs:
        if config == "sqlite":
            results[config] = run_sqlite(args, work)
            continue
        if cluster is None:
            t = time.perf_counter()
            cluster = start_cluster(stack, durable=not args.no_fsync)
            print(f"setup: PostgreSQL cluster started in {time.perf_counter() - t:.1f} s")
        replicas = 2 if config == "postgresql-x2" else 1
        results[config] = run_postgresql(args, work, cluster, replicas)


CONFIGS = ("sqlite", "postgresql", "postgresql-x2")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated, of {', '.join(CONFIGS)} (default: all)",
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--creates", type=int, default=400, help="measured creates per client")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured creates per client")
    parser.add_argument(
        "--workers", type=int, default=1, help="API processes per server (cthm serve --workers)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the work directory (logs, databases)"
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="PostgreSQL as the test kit runs it (fsync off): to see what durability costs",
    )
    ns = parser.parse_args()
    configs = [c.strip() for c in ns.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        parser.error(f"--configs: {', '.join(unknown) or 'none given'}; use {', '.join(CONFIGS)}")
    if not 1 <= ns.clients <= 64 or ns.creates < 1 or ns.warmup < 1:
        parser.error("--clients 1..64, --creates and --warmup 1 or more")
    if not 1 <= ns.workers <= 8:
        parser.error("--workers 1..8")
    if ns.warmup + ns.creates > MAX_PORT:
        parser.error(f"--warmup + --creates at most {MAX_PORT} (a port per create and client)")
    if any(c != "sqlite" for c in configs) and os.geteuid() != 0:
        parser.error("PostgreSQL needs root (the cluster runs as the postgres user)")
    args = Args(
        configs, ns.clients, ns.creates, ns.warmup, ns.json, ns.keep_logs, ns.no_fsync, ns.workers
    )

    def run_checked(stack: ExitStack, out: dict[str, Any]) -> bool:
        run(args, stack, out)
        results = out.get("results", {}).values()
        return all(
            r["stored_bindings"] == r["expected_bindings"] and not r["failures"] for r in results
        )

    return run_reported(run_checked, args.json_file)


if __name__ == "__main__":
    sys.exit(main())
