#!/usr/bin/env python3
"""cthm API -> kernel benchmark (issue 14): a write's way from the client to the kernel, and
a write's acknowledgement, each through a real `cthm serve` process on SQLite.

API -> kernel: one `cthm serve` with its embedded agent (nftables) on a fresh data directory;
routers holding N bindings (1000, 10) in namespaces this bench creates, loaded into the
database before the server starts (not timed); every router ACTIVE and its table read back as
desired before the first write. Then per router, the netlink watcher (netlink_watch.py) in
its namespace, each round: POST one binding (tcp, ftp), timed from sending the request (its
bytes prepared before the clock starts, one keep-alive connection) until the kernel's
notification of the transaction that added its port to the table's set was read (the watcher's
timestamp: when the kernel announced its commit); then DELETE it, timed until the transaction
that removed it; after each round the table is read back and must hold exactly the loaded
bindings (not timed). A pause of 50 ms after each write lets the agent write its statuses, so
the next write meets a quiet server as a user's would. No periodic resync during the rounds
(1 hour).

POST acknowledged: one `cthm serve --no-agent` on a fresh SQLite database (WAL, synchronous
FULL: acknowledged means durable), one client, one request at a time on one keep-alive
connection, timed from sending its prepared bytes until the whole answer was read; a
warm-up, then the measured POSTs (each 201).

Every namespace carries a unique prefix and is deleted by exactly its name; servers are
stopped by their pid; also on failure, Ctrl-C or SIGTERM. Alone: prints human lines, then one
JSON summary (`scripts/bench.py` runs it as part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from bench_support import (
    KernelWatch,
    LoadedRouter,
    Namespaces,
    RawHttp,
    load_routers,
    percentile,
    run_reported,
)

from cthm.domain import HelperCatalog, assignments_for
from cthm.netfilter import NftablesBackend, make_runner
from cthm.netfilter.render import desired_table
from cthm.store import Store
from cthm.testing import ServerProcess

SERVE_ARGS = (
    *("--quota-bindings-per-router", "-1"),
    *("--quota-bindings-per-project", "-1"),
    # No periodic resync in the measured rounds: it is measured on its own (bench.py).
    *("--resync-interval", "3600"),
)
WRITE_TIMEOUT = 5.0  # one write not in the kernel after this: counted as a timeout
ACTIVE_TIMEOUT = 120.0
PAUSE = 0.05
FIRST_WRITTEN_PORT = 30000
REQUEST_TIMEOUT = 30.0

log = logging.getLogger("bench")


def _stop(server: ServerProcess) -> None:
    if server.process is not None and server.process.poll() is None:
        try:
            server.stop()
        except AssertionError as exc:  # it ignored SIGTERM: stop() killed it
            print(f"warning: {str(exc)[:300]}", file=sys.stderr)


def _start(stack: ExitStack, data_dir: Path, log_dir: Path, args: tuple[str, ...]) -> ServerProcess:
    server = ServerProcess(data_dir, log_dir, args=args)
    stack.callback(_stop, server)  # before start(): an interrupted start is stopped too
    server.start()
    return server


def _wait_active(client: httpx.Client, ids: set[str], server: ServerProcess) -> None:
    deadline = time.monotonic() + ACTIVE_TIMEOUT
    while True:
        response = client.get(
            "/v2.0/routers", params=[("fields", "id"), ("fields", "status"), ("limit", "10000")]
        )
        response.raise_for_status()
        status = {r["id"]: r["status"] for r in response.json()["routers"]}
        if all(status.get(i) == "ACTIVE" for i in ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"routers not ACTIVE: {status}\n{server.logs()[-2000:]}")
        time.sleep(0.1)


class Checker:
    """Reads a router's table back (libnftables, outside the server) against its bindings."""

    def __init__(self) -> None:
        self.backend = NftablesBackend(make_runner("libnftables"))

    def check(self, entry: LoadedRouter, catalog: HelperCatalog) -> None:
        have = self.backend.read(entry.router.namespace)
        want = desired_table(assignments_for(catalog, entry.bindings), None)
        if have is None or have.assignments != want.assignments or have.garbage:
            raise RuntimeError(f"VERIFY FAILED for {entry.router.namespace}: {have}")

    def close(self) -> None:
        self.backend.close()


def _rounds_on(
    http: RawHttp,
    entry: LoadedRouter,
    rounds: int,
    checker: Checker,
    catalog: HelperCatalog,
) -> dict[str, list[float]]:
    """`rounds` times: POST a binding, time until the kernel holds its port; DELETE it, time
    until it no longer does; read the table back."""
    times: dict[str, list[float]] = {"add": [], "delete": [], "post_answer": [], "timeouts": []}
    url = f"/v2.0/routers/{entry.router.id}/conntrack_helpers"
    watch = KernelWatch(entry.router.namespace)
    try:
        for i in range(rounds):
            port = FIRST_WRITTEN_PORT + i
            body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
            request = http.prepare("POST", url, body)
            watch.drain()
            start = time.perf_counter()
            status, answer = http.send(request)
            times["post_answer"].append((time.perf_counter() - start) * 1000)
            if status != 201:
                raise RuntimeError(f"POST binding: {status} {answer[:500]!r}")
            seen = watch.wait_for(port, True, start, WRITE_TIMEOUT)
            if seen is None:
                times["timeouts"].append(port)
            else:
                times["add"].append((seen - start) * 1000)
            time.sleep(PAUSE)
            binding_id = json.loads(answer)["conntrack_helper"]["id"]
            request = http.prepare("DELETE", f"{url}/{binding_id}")
            watch.drain()
            start = time.perf_counter()
            status, answer = http.send(request)
            if status != 204:
                raise RuntimeError(f"DELETE binding: {status} {answer[:500]!r}")
            seen = watch.wait_for(port, False, start, WRITE_TIMEOUT)
            if seen is None:
                times["timeouts"].append(port)
            else:
                times["delete"].append((seen - start) * 1000)
            time.sleep(PAUSE)
            checker.check(entry, catalog)
    finally:
        watch.close()
    return times


def _summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
        "n": len(samples),
    }


def api_to_kernel(
    stack: ExitStack, work: Path, sizes: list[int], rounds: int, say: Any
) -> dict[str, Any]:
    """The API -> kernel rounds on one router per size; per size its add/delete summaries."""
    catalog = HelperCatalog()
    namespaces = Namespaces("cthmk")
    stack.callback(_cleanup, namespaces)
    labels = [f"n{size}" for size in sizes]
    names = namespaces.create(labels)
    data_dir = work / "agent-data"
    data_dir.mkdir()
    store = Store(f"sqlite:///{data_dir / 'cthm.db'}")
    try:
        store.migrate()
        loaded = load_routers(
            store,
            catalog,
            [(label, name, size) for label, name, size in zip(labels, names, sizes, strict=True)],
        )
    finally:
        store.close()
    server = _start(stack, data_dir, work / "logs", SERVE_ARGS)
    checker = Checker()
    stack.callback(checker.close)
    client = stack.enter_context(
        httpx.Client(base_url=server.url, headers=server.auth_headers(), timeout=REQUEST_TIMEOUT)
    )
    _wait_active(client, {e.router.id for e in loaded}, server)
    for entry in loaded:
        checker.check(entry, catalog)
    result: dict[str, Any] = {}
    http = RawHttp(server.url, server.auth_headers(), REQUEST_TIMEOUT)
    stack.callback(http.close)
    for size, entry in zip(sizes, loaded, strict=True):
        times = _rounds_on(http, entry, rounds, checker, catalog)
        result[f"n{size}"] = {
            "bindings": size,
            "rounds": rounds,
            "post_to_kernel": _summary(times["add"]),
            "delete_to_kernel": _summary(times["delete"]),
            "post_answer": _summary(times["post_answer"]),
            "timeouts": len(times["timeouts"]),
        }
        add = result[f"n{size}"]["post_to_kernel"]
        dele = result[f"n{size}"]["delete_to_kernel"]
        say(
            f"API -> kernel, router holding {size}: POST p50 {add.get('p50_ms', '-')} ms,"
            f" p99 {add.get('p99_ms', '-')} ms; DELETE p50 {dele.get('p50_ms', '-')} ms,"
            f" p99 {dele.get('p99_ms', '-')} ms; the API answered the POST in p50"
            f" {result[f'n{size}']['post_answer'].get('p50_ms', '-')} ms;"
            f" {rounds} rounds, verified, timeouts {len(times['timeouts'])}"
        )
    return result


def post_ack(stack: ExitStack, work: Path, posts: int, warmup: int, say: Any) -> dict[str, Any]:
    """One client's POSTs, one at a time, against `cthm serve --no-agent` on SQLite."""
    server = _start(
        stack,
        work / "api-data",
        work / "logs",
        ("--no-agent", *SERVE_ARGS),
    )
    with httpx.Client(
        base_url=server.url, headers=server.auth_headers(), timeout=REQUEST_TIMEOUT
    ) as client:
        response = client.post("/v2.0/routers", json={"router": {"name": "bench-ack"}})
        response.raise_for_status()
        url = f"/v2.0/routers/{response.json()['router']['id']}/conntrack_helpers"
        http = RawHttp(server.url, server.auth_headers(), REQUEST_TIMEOUT)
        samples = []
        try:
            for i in range(warmup + posts):
                body = {"conntrack_helper": {"protocol": "tcp", "port": 1 + i, "helper": "ftp"}}
                request = http.prepare("POST", url, body)
                start = time.perf_counter()
                status, answer = http.send(request)
                took = (time.perf_counter() - start) * 1000
                if status != 201:
                    raise RuntimeError(f"POST binding: {status} {answer[:500]!r}")
                if i >= warmup:
                    samples.append(took)
        finally:
            http.close()
        stored = client.get(url, params={"fields": "id", "limit": 10000}).json()
        if len(stored["conntrack_helpers"]) != warmup + posts:
            raise RuntimeError("POST acknowledged: not every created binding is stored")
    result = _summary(samples)
    say(
        f"POST acknowledged (SQLite, one client): p50 {result['p50_ms']} ms,"
        f" p99 {result['p99_ms']} ms over {posts} POSTs, all stored"
    )
    return result


def _cleanup(namespaces: Namespaces) -> None:
    left = namespaces.cleanup()
    if left:
        print(f"warning: could not delete namespaces {left}", file=sys.stderr)


ONLY = ("api-to-kernel", "post-ack")


def run(
    stack: ExitStack,
    out: dict[str, Any],
    rounds: int,
    posts: int,
    say: Any,
    only: str | None = None,
) -> None:
    """Both measurements into `out` (api_to_kernel, post_ack); only: just that one (ONLY)."""
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cthm-bench-k-")))
    if only in (None, "api-to-kernel"):
        out["api_to_kernel"] = api_to_kernel(stack, work, [1000, 10], rounds, say)
    if only in (None, "post-ack"):
        out["post_ack"] = post_ack(stack, work, posts, 20, say)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100, help="POSTs (and DELETEs) per router")
    parser.add_argument("--posts", type=int, default=200, help="measured acknowledged POSTs")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--only",
        choices=ONLY,
        default=None,
        help="run only this measurement (post-ack: no namespaces, no root needed)",
    )
    ns = parser.parse_args()
    if os.geteuid() != 0 and ns.only != "post-ack":
        raise SystemExit("the benchmark needs root (it creates network namespaces)")
    if not 1 <= ns.rounds <= 10000 or not 1 <= ns.posts <= 10000:
        raise SystemExit("--rounds and --posts: 1..10000")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")

    def say(line: str) -> None:
        print(line, flush=True)

    def run_checked(stack: ExitStack, out: dict[str, Any]) -> bool:
        run(stack, out, ns.rounds, ns.posts, say, ns.only)
        return True

    return run_reported(run_checked, ns.json)


if __name__ == "__main__":
    sys.exit(main())
