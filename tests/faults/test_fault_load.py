"""Bounded load: concurrent clients creating, updating (with If-Match) and deleting bindings
on shared routers. No 5xx; every 409 and 412 is a real conflict with an acknowledged write;
no two acknowledged updates of one binding from the same revision (no lost update); the
database holds each binding's last acknowledged write; the kernel equals the database.
"""

from __future__ import annotations

import random
import re
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from cthm.testing import NamespaceFactory
from support.faults import HELPERS, Api, ServerFactory, state_of, wait_settled

pytestmark = pytest.mark.kernel

THREADS = 8
OPS_PER_THREAD = 25
PORTS = range(2000, 2012)  # few ports: creates and port changes collide on purpose
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CURRENT = re.compile(r"current revision is (\d+)")


@dataclass
class Log:
    """Every outcome of every client, shared (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    # binding id -> revision -> state acknowledged at that revision (create: 1)
    acked: dict[str, dict[int, tuple[str, int, str]]] = field(default_factory=dict)
    duplicate_revisions: list[str] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)
    router_of: dict[str, str] = field(default_factory=dict)
    stale: list[tuple[str, int, int]] = field(default_factory=list)  # (id, sent, current)
    taken: list[tuple[str, str]] = field(default_factory=list)  # (router, conflicting id)
    gone: list[str] = field(default_factory=list)  # 404 on a binding id
    bad: list[str] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)

    def ack(self, router_id: str, body: dict[str, Any]) -> None:
        state = (body["protocol"], body["port"], body["helper"])
        with self.lock:
            revisions = self.acked.setdefault(body["id"], {})
            if body["revision_number"] in revisions:
                self.duplicate_revisions.append(f"{body['id']}@{body['revision_number']}")
            revisions[body["revision_number"]] = state
            self.router_of[body["id"]] = router_id

    def known(self) -> list[str]:
        with self.lock:
            return sorted(self.acked)


def client(api: Api, routers: list[str], log: Log, rng: random.Random) -> None:
    for _ in range(OPS_PER_THREAD):
        router_id = rng.choice(routers)
        known = [b for b in log.known() if log.router_of[b] == router_id]
        pick = rng.random()
        if pick < 0.35 or not known:
            protocol = rng.choice(("tcp", "udp"))
            port, helper = rng.choice(PORTS), rng.choice(HELPERS[protocol])
            response = api.create_binding(router_id, protocol, port, helper)
            log.codes[response.status_code] += 1
            if response.status_code == 201:
                log.ack(router_id, response.json()["conntrack_helper"])
            elif response.status_code == 409:
                found = UUID.findall(response.json()["NeutronError"]["message"])
                with log.lock:
                    log.taken.extend((router_id, b) for b in found if b != router_id)
                if not found:
                    log.bad.append(f"409 without the conflicting binding: {response.text}")
            else:
                log.bad.append(f"create: {response.status_code} {response.text}")
            continue
        binding_id = rng.choice(known)
        url = f"/v2.0/routers/{router_id}/conntrack_helpers/{binding_id}"
        shown = api.client.get(url)
        log.codes[shown.status_code] += 1
        if shown.status_code == 404:
            with log.lock:
                log.gone.append(binding_id)
            continue
        if shown.status_code != 200:
            log.bad.append(f"show: {shown.status_code} {shown.text}")
            continue
        current = shown.json()["conntrack_helper"]
        revision = current["revision_number"]
        if pick < 0.8:
            # Always a real change: a no-op PUT is acknowledged without a new revision.
            protocol = current["protocol"]
            others = [h for h in HELPERS[protocol] if h != current["helper"]]
            changes: dict[str, object] = {"helper": rng.choice(others)}
            if rng.random() < 0.3:
                changes["port"] = rng.choice([p for p in PORTS if p != current["port"]])
            response = api.update_binding(router_id, binding_id, changes, revision=revision)
            expected = 200
        else:
            response = api.delete_binding(router_id, binding_id, revision=revision)
            expected = 204
        log.codes[response.status_code] += 1
        if response.status_code == expected == 200:
            log.ack(router_id, response.json()["conntrack_helper"])
        elif response.status_code == expected == 204:
            with log.lock:
                log.deleted.add(binding_id)
        elif response.status_code == 412:
            match = CURRENT.search(response.json()["NeutronError"]["message"])
            if match is None:
                log.bad.append(f"412 without the current revision: {response.text}")
            else:
                with log.lock:
                    log.stale.append((binding_id, revision, int(match.group(1))))
        elif response.status_code == 404:
            with log.lock:
                log.gone.append(binding_id)
        elif response.status_code == 409:
            found = UUID.findall(response.json()["NeutronError"]["message"])
            with log.lock:
                log.taken.extend((router_id, b) for b in found if b not in (router_id, binding_id))
        else:
            log.bad.append(f"{response.request.method}: {response.status_code} {response.text}")


def test_concurrent_clients_on_shared_routers_lose_no_update(
    make_server: ServerFactory, netns: NamespaceFactory, counts: Counter[str]
) -> None:
    seed = secrets.randbits(32)
    counts["seed"] = seed
    server = make_server()
    namespaces = [netns.create(f"l{i}") for i in range(2)]
    with Api(server) as api:
        routers = {api.create_router(ns, f"l{i}"): ns for i, ns in enumerate(namespaces)}
    router_ids = sorted(routers)
    log = Log()
    apis = [Api(server, timeout=30.0) for _ in range(THREADS)]
    threads = [
        threading.Thread(target=client, args=(a, router_ids, log, random.Random(seed + i)))
        for i, a in enumerate(apis)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads), "clients still running after 120 s"
    finally:
        for a in apis:
            a.close()

    assert not log.bad, (seed, log.bad)
    assert not [c for c in log.codes if c >= 500], (seed, log.codes)
    assert not log.duplicate_revisions, ("two acknowledged writes from one revision", seed)
    # Every conflict names a write some client saw acknowledged.
    for binding_id, sent, current in log.stale:
        assert current > sent, (binding_id, sent, current)
        assert current in log.acked[binding_id], ("412 names a revision nobody wrote", binding_id)
    for router_id, other in log.taken:
        assert other in log.acked, (router_id, other)
        assert log.router_of[other] == router_id, (router_id, other)
    for binding_id in log.gone:
        assert binding_id in log.deleted, f"404 on {binding_id}, which nobody deleted"

    with Api(server) as api:
        db: dict[str, tuple[str, int, str]] = {}
        for router_id in router_ids:
            db.update(state_of(api.bindings(router_id)))
        lost = []
        for binding_id, revisions in log.acked.items():
            want = None if binding_id in log.deleted else revisions[max(revisions)]
            if db.get(binding_id) != want:
                lost.append((binding_id, want, db.get(binding_id)))
        assert not lost, (seed, lost)
        assert set(db) <= set(log.acked), "the database holds a binding nobody created"
        settled = wait_settled(api, routers, timeout=30.0)
        assert settled.ok, (settled.problems, server.logs())

    counts["requests"] = sum(log.codes.values())
    counts["writes_acknowledged"] = sum(len(r) for r in log.acked.values()) + len(log.deleted)
    counts["writes_lost"] = len(lost)
    counts["conflicts_412"] = len(log.stale)
    counts["conflicts_409"] = log.codes[409]
    counts["not_found_404"] = log.codes[404]
    counts["responses_5xx"] = sum(n for c, n in log.codes.items() if c >= 500)
    counts["bindings_at_end"] = len(db)
