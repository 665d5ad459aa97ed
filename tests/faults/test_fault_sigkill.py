"""SIGKILL of `cthm serve` at random moments while a client streams binding changes.

After every kill the server restarts on the same data directory; then every change the API
acknowledged (2xx with a body) is in the database, the one change in flight at the kill is
either fully there or not at all, and once the agent settles every router's kernel table
equals its bindings. Someone else's table in each namespace is never touched.
"""

from __future__ import annotations

import random
import secrets
import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from cthm.testing import NamespaceFactory
from support.faults import (
    HELPERS,
    Api,
    ServerFactory,
    add_foreign_table,
    nft_text,
    state_of,
    wait_settled,
)

pytestmark = pytest.mark.kernel

ROUNDS = 6
ROUTERS = 3
MAX_OPS_PER_ROUND = 400  # the stream stops by itself if the kill comes late
MAX_BINDINGS_PER_ROUTER = 10
KILL_AFTER = (0.05, 0.6)  # seconds after the stream starts
PORTS = range(1000, 1060)

State = tuple[str, int, str] | None  # (protocol, port, helper); None: deleted


@dataclass
class Pending:
    """The request in flight when the connection broke: it may or may not have committed."""

    kind: str
    router_id: str
    binding_id: str | None
    state: State


@dataclass
class Ledger:
    """The client's record: the last acknowledged state of every binding it knows."""

    acked: dict[str, State] = field(default_factory=dict)
    router_of: dict[str, str] = field(default_factory=dict)
    pending: Pending | None = None
    unexpected: list[str] = field(default_factory=list)
    acknowledged: int = 0

    def live(self, router_id: str) -> dict[str, tuple[str, int, str]]:
        return {
            b: s for b, s in self.acked.items() if s is not None and self.router_of[b] == router_id
        }


def stream(api: Api, routers: list[str], ledger: Ledger, rng: random.Random) -> None:
    """Creates, updates and deletes bindings until the server goes away (or MAX_OPS)."""
    for _ in range(MAX_OPS_PER_ROUND):
        router_id = rng.choice(routers)
        live = ledger.live(router_id)
        used = {(s[0], s[1]) for s in live.values()}
        pick = rng.random()
        try:
            if not live or (pick < 0.45 and len(live) < MAX_BINDINGS_PER_ROUTER):
                protocol = rng.choice(("tcp", "udp"))
                port = rng.choice([p for p in PORTS if (protocol, p) not in used])
                state = (protocol, port, rng.choice(HELPERS[protocol]))
                ledger.pending = Pending("create", router_id, None, state)
                response = api.create_binding(router_id, *state)
                if response.status_code != 201:
                    ledger.unexpected.append(f"create {state}: {response.status_code}")
                else:
                    body = response.json()["conntrack_helper"]
                    ledger.acked[body["id"]] = state
                    ledger.router_of[body["id"]] = router_id
                    ledger.acknowledged += 1
            elif pick < 0.8:
                binding_id, (protocol, port, helper) = rng.choice(sorted(live.items()))
                others = [h for h in HELPERS[protocol] if h != helper]
                changes: dict[str, object] = {"helper": rng.choice(others)}
                if rng.random() < 0.3:
                    free = [p for p in PORTS if (protocol, p) not in used]
                    changes["port"] = rng.choice(free)
                state = (protocol, int(changes.get("port", port)), str(changes["helper"]))  # type: ignore[call-overload]
                ledger.pending = Pending("update", router_id, binding_id, state)
                response = api.update_binding(router_id, binding_id, changes, revision=None)
                if response.status_code != 200:
                    ledger.unexpected.append(f"update {binding_id}: {response.status_code}")
                else:
                    body = response.json()["conntrack_helper"]
                    ledger.acked[binding_id] = (body["protocol"], body["port"], body["helper"])
                    ledger.acknowledged += 1
            else:
                binding_id = rng.choice(sorted(live))
                ledger.pending = Pending("delete", router_id, binding_id, None)
                response = api.delete_binding(router_id, binding_id)
                if response.status_code != 204:
                    ledger.unexpected.append(f"delete {binding_id}: {response.status_code}")
                else:
                    ledger.acked[binding_id] = None
                    ledger.acknowledged += 1
        except httpx.TransportError:
            return  # the server died: `pending` stays, its fate is unknown
        ledger.pending = None


def audit_round(
    ledger: Ledger, db: dict[str, tuple[str, int, str]], db_router: dict[str, str]
) -> tuple[int, list[str], str]:
    """(acknowledged writes missing from the DB, problems, what happened to the pending op)."""
    pending = ledger.pending
    lost = 0
    problems = []
    for binding_id, state in ledger.acked.items():
        allowed = {state}
        if pending is not None and pending.binding_id == binding_id:
            allowed.add(pending.state)
        actual = db.get(binding_id)
        if actual not in allowed:
            lost += 1
            problems.append(f"binding {binding_id}: acknowledged {state}, database has {actual}")
    extra = sorted(set(db) - set(ledger.acked))
    fate = "none"
    if pending is not None:
        if pending.kind == "create":
            fate = "committed" if extra else "not committed"
        else:
            assert pending.binding_id is not None
            fate = "committed" if db.get(pending.binding_id) == pending.state else "not committed"
    for binding_id in extra:
        created_in_flight = (
            pending is not None
            and pending.kind == "create"
            and len(extra) == 1
            and db[binding_id] == pending.state
            and db_router[binding_id] == pending.router_id
        )
        if not created_in_flight:
            problems.append(f"binding {binding_id} {db[binding_id]} was never written")
    return lost, problems, fate


def test_sigkill_during_a_stream_of_changes_loses_no_acknowledged_write(
    make_server: ServerFactory, netns: NamespaceFactory, counts: Counter[str]
) -> None:
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    counts["seed"] = seed
    server = make_server()
    namespaces = [netns.create(f"k{i}") for i in range(ROUTERS)]
    foreign = {ns: add_foreign_table(ns) for ns in namespaces}
    ledger = Ledger()
    with Api(server) as api:
        routers = {api.create_router(ns, f"k{i}"): ns for i, ns in enumerate(namespaces)}
    router_ids = sorted(routers)
    fates: Counter[str] = Counter()

    for round_no in range(ROUNDS):
        with Api(server) as api:
            thread = threading.Thread(target=stream, args=(api, router_ids, ledger, rng))
            thread.start()
            thread.join(rng.uniform(*KILL_AFTER))
            server.kill()  # SIGKILL, wherever the server and its agent are
            counts["faults_injected"] += 1
            thread.join(10)
            assert not thread.is_alive(), "the client did not notice the dead server"

        server.start()  # same data directory
        with Api(server) as api:
            db: dict[str, tuple[str, int, str]] = {}
            db_router: dict[str, str] = {}
            for router_id in router_ids:
                found = state_of(api.bindings(router_id))
                db.update(found)
                db_router.update(dict.fromkeys(found, router_id))
            lost, problems, fate = audit_round(ledger, db, db_router)
            counts["writes_lost"] += lost
            fates[fate] += 1
            assert not problems, (round_no, seed, problems)
            assert not ledger.unexpected, (round_no, seed, ledger.unexpected)

            settled = wait_settled(api, routers)
            assert settled.ok, (round_no, seed, settled.problems, server.logs())
            counts["settle_ms_max"] = max(counts["settle_ms_max"], round(settled.seconds * 1000))
        for ns, text in foreign.items():
            assert nft_text(ns, "cthm_faults_foreign") == text, f"foreign table changed in {ns}"
        # The database is the truth from here on (the in-flight change settled one way).
        ledger.acked = dict(db)
        ledger.router_of = dict(db_router)
        ledger.pending = None

    counts["writes_acknowledged"] = ledger.acknowledged
    counts["in_flight_committed"] = fates["committed"]
    counts["in_flight_not_committed"] = fates["not committed"]
    counts["bindings_at_end"] = sum(1 for s in ledger.acked.values() if s is not None)
    assert counts["writes_lost"] == 0
    assert ledger.acknowledged > ROUNDS, "the stream wrote almost nothing: the test proves little"
