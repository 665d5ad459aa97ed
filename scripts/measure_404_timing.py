#!/usr/bin/env python3
"""Can one request tell another project's router from an id that names nothing? (issue 10, 8c)

Starts a real `cthm serve` on loopback (its own temporary data directory, agent off unless
--agent), makes a router in project "victim" and a member token of project "attacker", then
sends N requests alternating between GET /v2.0/routers/<victim's router> (a 404 that is
recorded as a denied attempt) and GET /v2.0/routers/<a fresh random id> (a plain 404), over one
kept-alive connection, timing each from the client.

Reports the median of each kind, their difference, and how often three classifiers tell them
apart (50% is a coin toss):
  - midpoint: "foreign" when a request took longer than the midpoint of the two medians;
  - best threshold: the single threshold that separates the samples best (an upper bound for
    any one-request threshold attacker, chosen with hindsight);
  - pairwise: of each foreign/unknown pair sent back to back, the slower one is "foreign".
It also checks the two answers are the same body (apart from the id) and that every foreign
request became exactly one denied audit event.

    .venv/bin/python scripts/measure_404_timing.py [--n 2000] [--agent]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from cthm.testing.service import TOKEN_HEADER, ServerProcess


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="measured requests (half of each)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--agent", action="store_true", help="run the in-process agent too")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.n < 2 or args.n > 200_000 or args.warmup < 0 or args.warmup > 100_000:
        parser.error("--n must be 2..200000 and --warmup 0..100000")
    return args


def setup(server: ServerProcess) -> tuple[str, str]:
    """The victim's router id and the attacker's token secret."""
    admin = server.auth_headers()
    with httpx.Client(base_url=server.url, headers=admin, timeout=10.0) as client:
        router = {"router": {"name": "victim-edge", "project_id": "victim"}}
        response = client.post("/v2.0/routers", json=router)
        response.raise_for_status()
        router_id = str(response.json()["router"]["id"])
        token = {"auth_token": {"project_id": "attacker", "roles": ["member"]}}
        response = client.post("/v2.0/auth_tokens", json=token)
        response.raise_for_status()
        secret = str(response.json()["auth_token"]["token"])
    return router_id, secret


def measure(
    server: ServerProcess, router_id: str, secret: str, n: int, warmup: int
) -> tuple[list[float], list[float], list[str]]:
    """Alternating requests; durations in microseconds, foreign and unknown, and the request ids
    of the measured foreign requests."""
    foreign: list[float] = []
    unknown: list[float] = []
    foreign_ids: list[str] = []
    bodies: dict[str, str] = {}
    with httpx.Client(base_url=server.url, headers={TOKEN_HEADER: secret}, timeout=10.0) as client:
        for index in range(warmup + n):
            is_foreign = index % 2 == 0
            target = router_id if is_foreign else str(uuid.uuid4())
            started = time.perf_counter_ns()
            response = client.get(f"/v2.0/routers/{target}")
            elapsed = (time.perf_counter_ns() - started) / 1000.0
            if response.status_code != 404:
                raise SystemExit(f"expected 404, got {response.status_code}: {response.text}")
            kind = "foreign" if is_foreign else "unknown"
            bodies.setdefault(kind, response.text.replace(target, "<id>"))
            if index < warmup:
                continue
            (foreign if is_foreign else unknown).append(elapsed)
            if is_foreign:
                foreign_ids.append(response.headers["X-Openstack-Request-Id"])
    if bodies["foreign"] != bodies["unknown"]:
        raise SystemExit(f"the two 404 bodies differ: {bodies}")
    return foreign, unknown, foreign_ids


def accuracy_at(
    threshold: float, foreign: list[float], unknown: list[float], slower: bool
) -> float:
    """Share of samples classified right by "foreign iff (t > threshold) == slower"."""
    right = sum((t > threshold) == slower for t in foreign)
    right += sum((t > threshold) != slower for t in unknown)
    return right / (len(foreign) + len(unknown))


def best_threshold_accuracy(foreign: list[float], unknown: list[float]) -> float:
    samples = sorted([(t, True) for t in foreign] + [(t, False) for t in unknown])
    total = len(samples)
    # Threshold below everything: all called "foreign" (slower) or all "unknown".
    above_foreign, above_unknown = len(foreign), len(unknown)
    best = max(above_foreign, above_unknown) / total
    for _, is_foreign in samples:  # move one sample below the threshold at a time
        if is_foreign:
            above_foreign -= 1
        else:
            above_unknown -= 1
        below_foreign = len(foreign) - above_foreign
        below_unknown = len(unknown) - above_unknown
        slower_right = above_foreign + below_unknown  # "foreign is slower"
        faster_right = below_foreign + above_unknown  # "foreign is faster"
        best = max(best, slower_right / total, faster_right / total)
    return best


def denied_events(server: ServerProcess, request_ids: set[str]) -> int:
    """How many denied get_router events the measured foreign requests left (read as admin)."""
    found = 0
    marker: str | None = None
    with httpx.Client(base_url=server.url, headers=server.auth_headers(), timeout=30.0) as client:
        for _ in range(10_000):  # bounded paging
            params: dict[str, str | int] = {
                "outcome": "denied",
                "action": "get_router",
                "limit": 1000,
            }
            if marker is not None:
                params["marker"] = marker
            response = client.get("/v2.0/audit_events", params=params)
            response.raise_for_status()
            page = response.json()["audit_events"]
            found += sum(1 for event in page if event["request_id"] in request_ids)
            if len(page) < 1000:
                break
            marker = page[-1]["id"]
    return found


def report(foreign: list[float], unknown: list[float], events: int) -> dict[str, float | int]:
    median_f, median_u = statistics.median(foreign), statistics.median(unknown)
    slower = median_f > median_u
    midpoint = (median_f + median_u) / 2
    pairs = list(zip(foreign, unknown, strict=False))
    pairwise = sum((f > u) == slower for f, u in pairs) / len(pairs)
    return {
        "requests": len(foreign) + len(unknown),
        "median_foreign_us": round(median_f, 1),
        "median_unknown_us": round(median_u, 1),
        "difference_us": round(median_f - median_u, 1),
        "midpoint_accuracy": round(accuracy_at(midpoint, foreign, unknown, slower), 4),
        "best_threshold_accuracy": round(best_threshold_accuracy(foreign, unknown), 4),
        "pairwise_accuracy": round(pairwise, 4),
        "foreign_requests": len(foreign),
        "denied_events_recorded": events,
    }


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="cthm-404-timing-") as tmp:
        env = {"CTHM_AGENT_ENABLED": "true" if args.agent else "false"}
        with ServerProcess(Path(tmp) / "data", Path(tmp) / "logs", env=env) as server:
            router_id, secret = setup(server)
            foreign, unknown, ids = measure(server, router_id, secret, args.n, args.warmup)
            events = denied_events(server, set(ids))
            result = report(foreign, unknown, events)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:26} {value}")
    return 0 if events == len(foreign) else 1


if __name__ == "__main__":
    sys.exit(main())
