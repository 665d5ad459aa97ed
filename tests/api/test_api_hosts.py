"""Node agents over the real app and a real SQLite store, with real tokens: registration and
placement by the namespaces a host reports, each host's view and report, host-limited tokens,
the agents resource, the router's `hosts` field and per-host kernel state."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cthm.api import create_app
from cthm.domain import node_agent_id

from .conftest import fast_authenticator
from .hosts_support import (
    AGENT_KEYS,
    CONFIGURATION_KEYS,
    HOST_ENTRY_KEYS,
    registered,
    report,
    report_status,
    router_of,
    summary,
)
from .support import (
    JSON,
    Api,
    ApiFactory,
    TestClient,
    error_of,
    helpers_url,
    issue_token,
    make_settings,
    make_store,
)

NS_A, NS_B, NS_C = "qrouter-hosts-a", "qrouter-hosts-b", "qrouter-hosts-c"


@pytest.fixture
def agent(api: Api) -> Api:
    """The admin's API sending an agent token (any host)."""
    return api.as_token(api.issue_token("services", ["agent"]))


def limited_token(api: Api, host: str) -> str:
    response = api.post(
        "/v2.0/auth_tokens",
        json={"auth_token": {"project_id": "services", "roles": ["agent"], "host": host}},
    )
    assert response.status_code == 201, response.text
    assert response.json()["auth_token"]["host"] == host
    secret: str = response.json()["auth_token"]["token"]
    return secret


def iso(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


# --- registration and placement ----------------------------------------------------------------


def test_registration_places_the_routers_whose_namespace_the_host_reports(
    api: Api, agent: Api
) -> None:
    r1 = api.create_router(name="one", namespace=NS_A)
    r2 = api.create_router(name="two", namespace=NS_B)

    body = registered(agent, "node-a", [NS_A, "qrouter-not-registered"])

    assert set(body) == {
        "agent",
        "deployment_id",
        "revision",
        "agent_down_time",
        "kernel_usage",
        "routers",
    }
    assert body["kernel_usage"] is True
    assert body["routers"] == [{"id": r1["id"], "namespace": NS_A, "revision_number": 1}]
    assert body["agent_down_time"] == 75.0
    record = body["agent"]
    assert set(record) == AGENT_KEYS
    assert (record["id"], record["host"], record["alive"]) == (
        node_agent_id("node-a"),
        "node-a",
        True,
    )
    assert record["started_at"] == "2026-12-04T20:00:00Z"
    assert record["configurations"]["deployment_id"] == body["deployment_id"]
    head = watch_head(api)
    assert body["revision"] == head > 0
    assert router_of(api, r1["id"])["hosts"] == ["node-a"]
    assert router_of(api, r2["id"])["hosts"] == []

    # HA: a second host with the same namespace; then the first one loses it (failover).
    registered(agent, "node-b", [NS_A, NS_B])
    assert router_of(api, r1["id"])["hosts"] == ["node-a", "node-b"]
    assert router_of(api, r2["id"])["hosts"] == ["node-b"]
    moved = registered(agent, "node-a", [])
    assert moved["routers"] == []
    assert router_of(api, r1["id"])["hosts"] == ["node-b"]

    # Who registered which host is in the audit trail (once per host and token).
    events = api.get("/v2.0/audit_events", params={"action": "register_agent"}).json()
    details = sorted(e["detail"] for e in events["audit_events"])
    assert len(details) == 2
    assert details[0].startswith("host node-a registered by token ")


def watch_head(api: Api) -> int:
    response = api.get("/v2.0/watch", params={"since": 0, "timeout": 0})
    assert response.status_code == 200, response.text
    revision: int = response.json()["revision"]
    return revision


def test_the_router_listing_shows_hosts_with_one_query_for_the_page(api: Api, agent: Api) -> None:
    made = [api.create_router(name=f"r{i}", namespace=f"qrouter-page-{i}") for i in range(12)]
    registered(agent, "node-a", [r["namespace"] for r in made[:6]])
    registered(agent, "node-b", [r["namespace"] for r in made[3:9]])

    def listed(limit: int) -> tuple[dict[str, list[str]], int]:
        statements: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        event.listen(Engine, "before_cursor_execute", count)
        try:
            response = api.get("/v2.0/routers", params={"limit": limit})
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert response.status_code == 200, response.text
        return {r["id"]: r["hosts"] for r in response.json()["routers"]}, len(statements)

    few, few_statements = listed(2)
    hosts, many_statements = listed(12)
    assert len(few) == 2
    assert many_statements == few_statements  # not one query per router
    for index, router in enumerate(made):
        expected = ["node-a"] * (index < 6) + ["node-b"] * (3 <= index < 9)
        assert hosts[router["id"]] == expected, index
    only = api.get("/v2.0/routers", params={"fields": ["id", "hosts"]}).json()["routers"]
    assert all(set(r) == {"id", "hosts"} for r in only)
    refused = api.post("/v2.0/routers", json={"router": {"name": "x", "hosts": ["node-a"]}})
    assert refused.status_code == 400
    assert "read-only attribute hosts" in error_of(refused)["message"]


# --- each host's view and report ---------------------------------------------------------------


def test_each_host_sees_its_own_report_and_the_router_aggregates_them(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    ftp = api.create_helper(router["id"], "tcp", 21, "ftp")
    revision = router_of(api, router["id"])["revision_number"]
    registered(agent, "node-a", [NS_A])
    registered(agent, "node-b", [NS_A])

    listing = agent.get("/v2.0/hosts/node-a/routers")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert set(body) == {"routers", "tombstones", "revision", "deployment_id"}
    assert body["tombstones"] == []
    (desired,) = body["routers"]
    assert (desired["id"], desired["revision_number"], desired["status"]) == (
        router["id"],
        revision,
        "PENDING",
    )
    assert desired["invalid"] is None
    assert desired["rejected"] == []
    assert desired["conntrack_helpers"] == [
        {
            "id": ftp["id"],
            "protocol": "tcp",
            "port": 21,
            "helper": "ftp",
            "direction": "ingress",
            "revision_number": ftp["revision_number"],
            "status": "PENDING",
            "status_reason": "",
        }
    ]

    done = report_status(
        agent,
        "node-a",
        router["id"],
        revision,
        bindings=[{"id": ftp["id"], "revision_number": ftp["revision_number"], "status": "ACTIVE"}],
    )
    assert done.status_code == 200, done.text
    assert done.json() == {
        "status": {"id": router["id"], "revision_number": revision, "written": True}
    }
    mine = agent.get(f"/v2.0/hosts/node-a/routers/{router['id']}").json()["router"]
    theirs = agent.get(f"/v2.0/hosts/node-b/routers/{router['id']}").json()["router"]
    assert (mine["status"], mine["conntrack_helpers"][0]["status"]) == ("ACTIVE", "ACTIVE")
    assert (theirs["status"], theirs["conntrack_helpers"][0]["status"]) == ("PENDING", "PENDING")
    shown = router_of(api, router["id"])
    assert shown["status"] == "PENDING"
    assert f"host node-b: not yet at revision {revision}" in shown["status_reason"]

    report_status(agent, "node-b", router["id"], revision, "ERROR", "nft: no such file")
    shown = router_of(api, router["id"])
    assert shown["status"] == "ERROR"
    assert "host node-b: nft: no such file" in shown["status_reason"]

    report_status(agent, "node-b", router["id"], revision)
    assert router_of(api, router["id"])["status"] == "ACTIVE"


def test_a_host_cannot_report_on_a_router_not_placed_on_it(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-a", [NS_A])
    registered(agent, "node-c", [NS_C])
    before = router_of(api, router["id"])

    for host, router_id in (
        ("node-c", router["id"]),  # placed elsewhere
        ("node-never-seen", router["id"]),
        ("node-a", "3f0c6a53-0d5e-4a31-9f5e-7f0b8e0c2a11"),  # no such router
        ("node-a", "not-a-uuid"),
    ):
        refused = report_status(agent, host, router_id, before["revision_number"])
        assert refused.status_code == 404, (host, refused.text)
        assert error_of(refused)["type"] == "RouterNotFound"
        shown = agent.get(f"/v2.0/hosts/{host}/routers/{router_id}")
        assert shown.status_code == 404
    assert router_of(api, router["id"]) == before


def test_tombstones_are_per_host_and_cleared_idempotently(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-a", [NS_A])
    registered(agent, "node-b", [NS_A])
    assert api.delete(f"/v2.0/routers/{router['id']}").status_code == 204
    expected = [{"router_id": router["id"], "namespace": NS_A}]
    for host in ("node-a", "node-b"):
        assert agent.get(f"/v2.0/hosts/{host}/routers").json()["tombstones"] == expected

    for _ in range(2):  # idempotent
        cleared = agent.delete(f"/v2.0/hosts/node-a/tombstones/{router['id']}")
        assert cleared.status_code == 204, cleared.text
    assert agent.get("/v2.0/hosts/node-a/routers").json()["tombstones"] == []
    assert agent.get("/v2.0/hosts/node-b/routers").json()["tombstones"] == expected


# --- trust -------------------------------------------------------------------------------------


def test_a_host_limited_token_acts_for_its_host_only(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-b", [NS_A])
    node_a = api.as_token(limited_token(api, "node-a"))
    limit = "this token is limited to host node-a"

    for response in (
        report(node_a, "node-b", [NS_A]),
        node_a.get("/v2.0/hosts/node-b/routers"),
        node_a.get(f"/v2.0/hosts/node-b/routers/{router['id']}"),
        report_status(node_a, "node-b", router["id"], router["revision_number"]),
        node_a.delete(f"/v2.0/hosts/node-b/tombstones/{router['id']}"),
        node_a.get("/v2.0/watch", params={"since": 0, "timeout": 0}),
        node_a.get("/v2.0/watch", params={"since": 0, "timeout": 0, "host": "node-b"}),
    ):
        assert response.status_code == 403, response.text
        assert error_of(response) == {
            "type": "PolicyNotAuthorized",
            "message": limit,
            "detail": "",
        }
    # Nor through the status route without a host, which would write it wherever it is placed.
    legacy = node_a.put(
        f"/v2.0/routers/{router['id']}/status",
        json={"status": {"revision_number": router["revision_number"], "status": "ACTIVE"}},
    )
    assert legacy.status_code == 403, legacy.text
    assert error_of(legacy)["message"] == "rule:update_router_status is disallowed by policy"
    assert router_of(api, router["id"])["status"] == "PENDING"  # node-b's status untouched

    assert registered(node_a, "node-a", [NS_A])["routers"][0]["id"] == router["id"]
    ok = report_status(node_a, "node-a", router["id"], router["revision_number"])
    assert ok.status_code == 200, ok.text
    watched = node_a.get("/v2.0/watch", params={"since": 0, "timeout": 0, "host": "node-a"})
    assert watched.status_code == 200, watched.text
    # The refusals are in the audit trail, with the host as their target (none: every host).
    api.store.flush_denied()
    denied = api.get("/v2.0/audit_events", params={"outcome": "denied"}).json()["audit_events"]
    targets = [e["target_id"] for e in denied if e["target_type"] == "host"]
    assert sorted(targets, key=str) == [None] + ["node-b"] * 6


@pytest.mark.parametrize("role", ["member", "reader"])
def test_other_roles_are_refused_every_host_route(api: Api, role: str) -> None:
    router = api.create_router(namespace=NS_A)
    caller = api.as_token(api.issue_token("p1", [role]))
    for response in (
        report(caller, "node-a", [NS_A]),
        caller.get("/v2.0/hosts/node-a/routers"),
        caller.get(f"/v2.0/hosts/node-a/routers/{router['id']}"),
        report_status(caller, "node-a", router["id"], 1),
        caller.delete(f"/v2.0/hosts/node-a/tombstones/{router['id']}"),
    ):
        assert response.status_code == 403, response.text
        assert error_of(response)["type"] == "PolicyNotAuthorized"


def test_a_token_host_is_validated_and_shown(api: Api) -> None:
    def create(**fields: Any) -> Any:
        body = {"project_id": "services", "roles": ["agent"], **fields}
        return api.post("/v2.0/auth_tokens", json={"auth_token": body})

    for fields, message in (
        ({"roles": ["admin"], "host": "node-a"}, "only an agent token"),
        ({"roles": ["agent", "reader"], "host": "node-a"}, "only an agent token"),
        ({"host": "-node"}, "auth_token.host"),
        ({"host": ".hidden"}, "auth_token.host"),
        ({"host": ""}, "auth_token.host"),
        ({"host": "a b"}, "auth_token.host"),
        ({"host": "x" * 256}, "auth_token.host"),
        ({"host": 5}, "auth_token.host"),
    ):
        refused = create(**fields)
        assert refused.status_code == 400, (fields, refused.text)
        assert message in error_of(refused)["message"], fields

    made = create(host="node-a.example_1")
    assert made.status_code == 201, made.text
    token_id = made.json()["auth_token"]["id"]
    shown = api.get(f"/v2.0/auth_tokens/{token_id}").json()["auth_token"]
    assert shown["host"] == "node-a.example_1"
    unlimited = create()
    assert unlimited.json()["auth_token"]["host"] is None


def test_the_path_host_and_the_body_are_validated(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-a", [NS_A])
    for host in ("-x", ".x", "a%20b", "x" * 256):
        refused = agent.get(f"/v2.0/hosts/{host}/routers")
        assert refused.status_code == 400, (host, refused.text)
        assert "host" in error_of(refused)["message"]

    def agent_body(**fields: Any) -> JSON:
        return {"agent": {"namespaces": [], "configurations": {}, "kernel": [], **fields}}

    for body, words in (
        (agent_body(extra=1), "unknown field"),
        (agent_body(namespaces=["bad name"]), "agent.namespaces[0]"),
        (agent_body(namespaces=[f"qrouter-{i}" for i in range(10_001)]), "namespaces"),
        (agent_body(configurations={"blob": "x" * 70_000}), "agent.configurations"),
        (agent_body(started_at="yesterday"), "started_at"),
        (agent_body(kernel=[summary(router, missing=[_row()] * 101)]), "missing"),
        (agent_body(kernel=[summary(router, garbage=["x"] * 21)]), "garbage"),
        (agent_body(kernel=[summary(router, verified_at="2026-12-04T20:00:00")]), "verified"),
        (agent_body(kernel=[summary(router, surprise=True)]), "unknown field"),
    ):
        refused = agent.put("/v2.0/hosts/node-a/agent", json=body)
        assert refused.status_code == 400, (words, refused.text)
        assert words in error_of(refused)["message"], refused.text
    nan = agent.put(
        "/v2.0/hosts/node-a/agent",
        content=b'{"agent": {"configurations": {"load": NaN}}}',
        headers={"Content-Type": "application/json"},
    )
    assert nan.status_code == 400, nan.text
    assert "NaN" in error_of(nan)["message"]
    for status_body in (
        {"status": {"revision_number": 1, "status": "PENDING"}},
        {"status": {"revision_number": -1, "status": "ACTIVE"}},
        {"status": {"revision_number": 1, "status": "ACTIVE", "kernel": {"router_id": "x"}}},
    ):
        refused = agent.put(f"/v2.0/hosts/node-a/routers/{router['id']}/status", json=status_body)
        assert refused.status_code == 400, refused.text
    # More than the 64 KiB other requests may send: a host with many namespaces is not refused.
    many = [f"qrouter-many-{i:05d}" for i in range(5000)]
    accepted = report(agent, "node-a", [*many, NS_A])
    assert accepted.status_code == 200, accepted.text
    assert len(accepted.request.content) > 64 * 1024


def _row() -> JSON:
    return {"protocol": "tcp", "port": 21, "direction": "ingress", "kernel_helper": "ftp"}


def test_an_embedded_server_refuses_node_agents(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = make_store(settings)
    app = create_app(
        settings, store, authenticator=fast_authenticator(), local_agent_host="embedded-host"
    )
    with TestClient(app) as client:
        token = issue_token(store, "admin", ["admin"])
        api = Api(client=client, store=store, token=token, admin_token=token)
        router = api.create_router(namespace=NS_A)
        assert router["hosts"] == ["embedded-host"]
        for response in (
            report(api, "node-a", [NS_A]),
            report_status(api, "node-a", router["id"], 1),
        ):
            assert response.status_code == 409, response.text
            assert error_of(response) == {
                "type": "EmbeddedAgent",
                "message": "this server runs its own agent (embedded mode): start it with "
                "--no-agent to use node agents",
                "detail": "",
            }
        assert api.get("/v2.0/agents").json()["agents"] == []
    store.close()


# --- the agents resource -----------------------------------------------------------------------


def test_node_agents_are_listed_with_their_reports(api: Api, agent: Api) -> None:
    configurations = {
        "backend": "nftables",
        "chosen_by": "auto",
        "reason": "the node's routers use nftables",
        "routers": 2,
        "counts": {"applied": 3, "noop": 1},
        "report_interval": 30.0,
        "namespaces": 2,
        "watch": {"revision": 7, "connected": True, "events": 4, "relists": 1},
    }
    before = datetime.now().astimezone()
    registered(agent, "node-b", [NS_A], configurations=configurations, started_at=None)
    registered(agent, "node-a", [NS_B], configurations={})

    listed = api.get("/v2.0/agents")
    assert listed.status_code == 200, listed.text
    agents = listed.json()["agents"]
    assert sorted(a["host"] for a in agents) == ["node-a", "node-b"]
    node_b = next(a for a in agents if a["host"] == "node-b")
    assert set(node_b) == AGENT_KEYS
    assert node_b["id"] == node_agent_id("node-b")
    assert node_b["alive"] is True
    assert node_b["started_at"] is None
    assert iso(node_b["heartbeat_timestamp"]) >= before
    assert node_b["created_at"] == node_b["heartbeat_timestamp"]  # first report
    shown = node_b["configurations"]
    assert set(shown) >= CONFIGURATION_KEYS
    assert shown["watch"] == configurations["watch"]
    assert (shown["backend"], shown["routers"], shown["report_interval"]) == ("nftables", 2, 30.0)
    assert shown["counts"] == {"applied": 3, "noop": 1, "failed": 0, "removed": 0, "drift": 0}
    node_a = next(a for a in agents if a["host"] == "node-a")["configurations"]
    assert (node_a["backend"], node_a["queue_depth"], node_a["retired_backends"]) == (None, 0, [])

    one = api.get(f"/v2.0/agents/{node_agent_id('node-a')}")
    assert one.status_code == 200, one.text
    assert one.json()["agent"]["host"] == "node-a"
    hosts = api.get("/v2.0/agents", params={"host": "node-b", "fields": ["id", "host"]})
    assert hosts.json()["agents"] == [{"id": node_agent_id("node-b"), "host": "node-b"}]
    assert api.get("/v2.0/agents", params={"alive": "false"}).json()["agents"] == []


def test_an_agent_is_dead_after_agent_down_time(api_factory: ApiFactory) -> None:
    api = api_factory(agent_down_time=0.5)
    router = api.create_router(namespace=NS_A)
    registered(api, "node-a", [NS_A])
    report_status(api, "node-a", router["id"], router["revision_number"])
    assert router_of(api, router["id"])["status"] == "ACTIVE"
    time.sleep(0.7)
    (shown,) = api.get("/v2.0/agents").json()["agents"]
    assert shown["alive"] is False
    assert api.get("/v2.0/agents", params={"alive": "false"}).json()["agents"] == [shown]


def test_the_server_marks_the_routers_of_a_dead_agent(tmp_path: Path) -> None:
    """The lifespan's liveness task: no request needed for a silent agent's routers to say so."""
    settings = make_settings(tmp_path, agent_down_time=0.6)
    store = make_store(settings)
    app = create_app(settings, store, authenticator=fast_authenticator())
    with TestClient(app) as client:
        token = issue_token(store, "admin", ["admin"])
        api = Api(client=client, store=store, token=token, admin_token=token)
        router = api.create_router(namespace=NS_A)
        registered(api, "node-a", [NS_A])
        report_status(api, "node-a", router["id"], router["revision_number"])
        assert router_of(api, router["id"])["status"] == "ACTIVE"
        deadline = time.monotonic() + 5.0
        shown = router_of(api, router["id"])
        while shown["status"] == "ACTIVE" and time.monotonic() < deadline:
            time.sleep(0.1)
            shown = router_of(api, router["id"])
        assert shown["status"] == "ERROR"
        assert "host node-a: agent dead (last report " in shown["status_reason"]
        # Back: the next report says so at once.
        registered(api, "node-a", [NS_A])
        report_status(api, "node-a", router["id"], router["revision_number"])
        assert router_of(api, router["id"])["status"] == "ACTIVE"
    store.close()


SHORT_DOWN_TIME = 1.5


@pytest.fixture
def short_lived(api_factory: ApiFactory) -> Api:
    # Long enough for the requests between a registration and the delete that needs the agent
    # alive, on a loaded machine and on PostgreSQL (0.5 s was not, under `make test`).
    return api_factory(agent_down_time=SHORT_DOWN_TIME)


def test_deleting_a_node_agent(short_lived: Api) -> None:
    api = short_lived
    router = api.create_router(namespace=NS_A)
    registered(api, "node-a", [NS_A])
    registered(api, "node-b", [NS_A])
    node_a = node_agent_id("node-a")

    alive = api.delete(f"/v2.0/agents/{node_a}")
    assert alive.status_code == 409, alive.text
    error = error_of(alive)
    assert error["type"] == "AgentAlive"
    assert "node-a" in error["message"]
    assert "force" in error["message"]
    member = api.as_token(api.issue_token("p1", ["member"]))
    agent_token = api.as_token(api.issue_token("services", ["agent"]))
    for caller in (member, agent_token):
        refused = caller.delete(f"/v2.0/agents/{node_a}?force=true")
        assert refused.status_code == 403
        assert error_of(refused)["message"] == "rule:delete_agent is disallowed by policy"

    forced = api.delete(f"/v2.0/agents/{node_a}", params={"force": "true"})
    assert forced.status_code == 204, forced.text
    assert api.get(f"/v2.0/agents/{node_a}").status_code == 404
    assert router_of(api, router["id"])["hosts"] == ["node-b"]

    time.sleep(SHORT_DOWN_TIME + 0.2)  # node-b is dead now: no force needed
    dead = api.delete(f"/v2.0/agents/{node_agent_id('node-b')}")
    assert dead.status_code == 204, dead.text
    shown = router_of(api, router["id"])
    assert shown["hosts"] == []
    assert shown["status"] == "PENDING"
    assert api.get("/v2.0/agents").json()["agents"] == []
    for agent_id in (node_a, "3f0c6a53-0d5e-4a31-9f5e-7f0b8e0c2a11", "nope"):
        gone = api.delete(f"/v2.0/agents/{agent_id}")
        assert gone.status_code == 404
        assert error_of(gone)["type"] == "AgentNotFound"
    assert api.delete(f"/v2.0/agents/{node_a}?force=maybe").status_code == 400
    events = api.get("/v2.0/audit_events", params={"action": "delete_agent"}).json()
    ok = [e for e in events["audit_events"] if e["outcome"] == "success"]
    assert sorted(e["target_id"] for e in ok) == sorted([node_a, node_agent_id("node-b")])
    # Refused while alive (allowed, then 409): a failed attempt; an unknown agent: nothing.
    failed = [e for e in events["audit_events"] if e["outcome"] == "failed"]
    assert [(e["target_id"], e["status_code"]) for e in failed] == [(node_a, 409)]


# --- per-host kernel state ---------------------------------------------------------------------


def test_kernel_state_has_one_entry_per_host(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    api.create_helper(router["id"], "tcp", 21, "ftp")
    api.create_helper(router["id"], "udp", 69, "tftp")
    router = router_of(api, router["id"])
    revision = router["revision_number"]
    tftp = {"protocol": "udp", "port": 69, "direction": "ingress", "kernel_helper": "tftp"}
    # node-a: verified, through its heartbeat; node-b: tftp missing, an error, through its
    # status report.
    registered(
        agent, "node-a", [NS_A], kernel=[summary(router, verified_at="2026-12-04T20:00:09Z")]
    )
    registered(agent, "node-b", [NS_A])
    broken = summary(
        router,
        in_sync=False,
        missing=[tftp],
        verified_at="2026-12-04T19:00:00Z",
        last_error="nft: Operation not permitted",
        last_error_at="2026-12-04T20:00:07Z",
        drift_repairs=2,
    )
    written = report_status(agent, "node-b", router["id"], revision, "ERROR", "nft", kernel=broken)
    assert written.status_code == 200, written.text

    body = api.get(f"/v2.0/routers/{router['id']}/kernel_state").json()["kernel_state"]
    node_a, node_b = body["hosts"]
    assert set(node_a) == HOST_ENTRY_KEYS
    assert (node_a["host"], node_a["agent_id"], node_a["agent_alive"]) == (
        "node-a",
        node_agent_id("node-a"),
        True,
    )
    assert (node_a["in_sync"], node_a["missing"], node_a["status"]) == (True, [], None)
    assert node_a["verified_at"] == "2026-12-04T20:00:09Z"
    assert (node_b["host"], node_b["in_sync"], node_b["status"]) == ("node-b", False, "ERROR")
    assert node_b["revision_number"] == revision
    assert node_b["missing"] == [{**tftp, "helper": "tftp"}]
    assert node_b["last_error"] == "nft: Operation not permitted"
    assert node_b["drift_repairs"] == 2
    # The top level: in sync only if every host is; the oldest verification; the latest error.
    assert body["in_sync"] is False
    assert body["verified_at"] == "2026-12-04T19:00:00Z"
    assert (body["last_error"], body["last_error_at"]) == (
        "nft: Operation not permitted",
        "2026-12-04T20:00:07Z",
    )
    assert body["actual"] == []  # two hosts: each has its own
    assert body["missing"] == [{**tftp, "helper": "tftp"}]
    assert len(body["desired"]) == 2

    registered(agent, "node-b", [])  # one host left: its actual is the top level's
    body = api.get(f"/v2.0/routers/{router['id']}/kernel_state").json()["kernel_state"]
    assert [h["host"] for h in body["hosts"]] == ["node-a"]
    assert body["in_sync"] is True
    assert body["actual"] == sorted(body["desired"], key=lambda r: (r["protocol"], r["port"]))

    # A binding added since node-a's last read: its in_sync no longer holds.
    api.create_helper(router["id"], "tcp", 2121, "ftp")
    body = api.get(f"/v2.0/routers/{router['id']}/kernel_state").json()["kernel_state"]
    assert body["hosts"][0]["in_sync"] is False


def test_kernel_state_of_a_router_no_host_places(api: Api) -> None:
    router = api.create_router(namespace=NS_C)
    body = api.get(f"/v2.0/routers/{router['id']}/kernel_state").json()["kernel_state"]
    assert body["hosts"] == []
    assert body["in_sync"] is None
    assert f"no node agent reports namespace {NS_C}" in body["last_error"]


def test_binding_reports_are_limited_to_the_router(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    other = api.create_router(namespace=NS_B)
    theirs = api.create_helper(other["id"], "tcp", 21, "ftp")
    registered(agent, "node-a", [NS_A, NS_B])
    item = {"id": theirs["id"], "revision_number": theirs["revision_number"], "status": "ACTIVE"}
    done = report_status(agent, "node-a", router["id"], 1, bindings=[item])
    assert done.status_code == 200, done.text
    shown = api.get(helpers_url(other["id"], theirs["id"])).json()["conntrack_helper"]
    assert shown["status"] == "PENDING"
    twice = report_status(agent, "node-a", router["id"], 1, bindings=[item, item])
    assert twice.status_code == 400
    assert "reported twice" in error_of(twice)["message"]
