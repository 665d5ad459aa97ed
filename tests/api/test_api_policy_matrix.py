"""The full policy matrix over the real API, with real tokens: every role, every action, on a
target of the caller's own project and of another project.

EXPECTED is written out by hand, independently of cthm.api.policy.POLICY: it is what the issue
asks for, and the API must agree with it cell by cell. Each cell runs on fresh objects and checks
the answer AND the database: an allowed write changed it as asked, a denied one changed nothing.

    Y  ok         2xx and the action took effect (a listing shows the target)
    H  hidden     404 as for an unknown id (a listing leaves the target out)
    F  forbidden  403 PolicyNotAuthorized

Every token in the test belongs to project "pa" and has the one role of its column.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.agent import Agent, LocalStoreSource
from cthm.api import policy
from cthm.domain import AgentReport, HelperCatalog, Status, derive_agent_id, node_agent_id
from cthm.netfilter import FakeNftables, NftablesBackend

from .support import JSON, Api, ApiFactory, State, error_of, helpers_url, state_of

OK, HIDDEN, FORBIDDEN = "ok", "hidden", "forbidden"
# The agent the admin's app reports (agents belong to no project: own and other agree).
AGENT_ID = derive_agent_id("matrix-host", Path("/nonexistent/cthm-matrix"))
# A node agent's host, placing each cell's router (hosts belong to no project either).
NODE = "matrix-node"
Y, H, F = OK, HIDDEN, FORBIDDEN  # short names for the table
ROLES = ("admin", "member", "reader", "agent")
OWN, OTHER = "pa", "pb"  # the caller's project, and another

# Per role: the target in the caller's own project (own), in another project (oth).
EXPECTED: dict[str, tuple[str, ...]] = {
    #                             admin     member    reader    agent
    #                             own  oth  own  oth  own  oth  own  oth
    "router create":              (Y, Y, F, F, F, F, F, F),
    "router create with id":      (Y, Y, F, F, F, F, F, F),
    "router list":                (Y, Y, Y, H, Y, H, Y, Y),
    "router show":                (Y, Y, Y, H, Y, H, Y, Y),
    "router kernel state":        (Y, Y, Y, H, Y, H, Y, Y),
    "router update":              (Y, Y, Y, H, F, H, F, F),
    "router delete":              (Y, Y, F, H, F, H, F, F),
    "router resync":              (Y, Y, Y, H, F, H, F, F),
    "binding create":             (Y, Y, Y, H, F, H, F, F),
    "binding list":               (Y, Y, Y, H, Y, H, Y, Y),
    "binding show":               (Y, Y, Y, H, Y, H, Y, Y),
    "binding update":             (Y, Y, Y, H, F, H, F, F),
    "binding delete":             (Y, Y, Y, H, F, H, F, F),
    "high-risk binding create":   (Y, Y, F, H, F, H, F, F),
    "high-risk binding list":     (Y, Y, Y, H, Y, H, Y, Y),
    "high-risk binding show":     (Y, Y, Y, H, Y, H, Y, Y),
    "high-risk binding update":   (Y, Y, F, H, F, H, F, F),
    "high-risk binding delete":   (Y, Y, Y, H, F, H, F, F),
    "status write":               (Y, Y, F, H, F, H, Y, Y),
    "catalog read":               (Y, Y, Y, Y, Y, Y, Y, Y),
    "token create":               (Y, Y, F, F, F, F, F, F),
    "token list":                 (Y, Y, F, F, F, F, F, F),
    "token show":                 (Y, Y, F, F, F, F, F, F),
    "token revoke":               (Y, Y, F, F, F, F, F, F),
    "audit list":                 (Y, Y, F, F, F, F, F, F),
    "agent list":                 (Y, Y, F, F, F, F, F, F),
    "agent show":                 (Y, Y, F, F, F, F, F, F),
    "agent delete":               (Y, Y, F, F, F, F, F, F),
    "host report":                (Y, Y, F, F, F, F, Y, Y),
    "host routers list":          (Y, Y, F, F, F, F, Y, Y),
    "host router show":           (Y, Y, F, F, F, F, Y, Y),
    "host status write":          (Y, Y, F, F, F, F, Y, Y),
    "host tombstone clear":       (Y, Y, F, F, F, F, Y, Y),
    "watch":                      (Y, Y, F, F, F, F, Y, Y),
    "metrics":                    (Y, Y, F, F, F, F, F, F),
}  # fmt: skip


@dataclass
class Targets:
    """Fresh objects of one project for one cell, made by the admin."""

    project: str
    router: JSON
    ftp: JSON  # tcp/21
    sip: JSON  # udp/5060, high-risk
    token_id: str


def make_targets(admin: Api, project: str) -> Targets:
    router = admin.create_router(name="r", project_id=project)
    ftp = admin.create_helper(router["id"], "tcp", 21, "ftp")
    sip = admin.create_helper(router["id"], "udp", 5060, "sip")
    placed = admin.put(f"/v2.0/hosts/{NODE}/agent", json=node_report(router["namespace"]))
    assert placed.status_code == 200, placed.text
    router = admin.get(f"/v2.0/routers/{router['id']}").json()["router"]  # its revision now
    token = admin.post(
        "/v2.0/auth_tokens", json={"auth_token": {"project_id": project, "roles": ["reader"]}}
    )
    assert token.status_code == 201, token.text
    return Targets(project, router, ftp, sip, token.json()["auth_token"]["id"])


def node_report(namespace: str) -> JSON:
    return {"agent": {"namespaces": [namespace], "configurations": {}, "kernel": []}}


# What one action does: the request, the status it answers with when allowed, and a check of
# its effect (from the state before and after, and the response) when it is allowed.
Effect = Callable[[State, State, httpx.Response], bool]


@dataclass(frozen=True)
class Action:
    policy_actions: tuple[str, ...]  # the POLICY rows it exercises
    method: str
    url: str
    body: JSON | None
    ok_status: int
    effect: Effect
    listed: str | None = None  # a listing: the collection the target must (not) appear in
    target_id: str | None = None


def _find(items: list[Any], object_id: str) -> Any:
    return next((item for item in items if item.id == object_id), None)


def _read_only(before: State, after: State, response: httpx.Response) -> bool:
    return before == after


def _shows(key: str, object_id: str) -> Effect:
    return lambda b, a, r: b == a and r.json()[key]["id"] == object_id


def _binding_is(binding_id: str | None, port: int, helper: str) -> Effect:
    """The binding (None: the one the response created) now has this port and helper."""

    def check(before: State, after: State, response: httpx.Response) -> bool:
        found = _find(after.bindings, binding_id or response.json()["conntrack_helper"]["id"])
        return found is not None and (found.port, found.helper) == (port, helper)

    return check


def _gone(kind: str, object_id: str) -> Effect:
    def check(before: State, after: State, response: httpx.Response) -> bool:
        if kind == "router":
            was, now = before.routers, after.routers
        else:
            was, now = before.bindings, after.bindings
        return _find(was, object_id) is not None and _find(now, object_id) is None

    return check


def actions(t: Targets) -> dict[str, Action]:
    """Every action of the matrix, aimed at the targets `t`."""
    rid, ftp, sip = t.router["id"], t.ftp["id"], t.sip["id"]
    router_url = f"/v2.0/routers/{rid}"
    token_url = f"/v2.0/auth_tokens/{t.token_id}"
    create, update = "create_router_conntrack_helper", "update_router_conntrack_helper"
    risky = policy.HIGH_RISK_SUFFIX
    get_binding, delete_binding = "get_router_conntrack_helper", "delete_router_conntrack_helper"
    new_id = str(uuid.uuid4())  # a router id the caller chooses (adoption from Neutron)

    def status_written(b: State, a: State, r: httpx.Response) -> bool:
        router = _find(a.routers, rid)
        return bool(r.json()["status"]["written"]) and router.status == Status.ACTIVE

    def token_created(b: State, a: State, r: httpx.Response) -> bool:
        made = _find(a.tokens, r.json()["auth_token"]["id"])
        return made is not None and made.project_id == t.project

    def token_revoked(b: State, a: State, r: httpx.Response) -> bool:
        return _find(a.tokens, t.token_id).revoked_at is not None

    def binding(protocol: str, port: int, helper: str) -> JSON:
        return {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}

    status = {"status": {"revision_number": t.router["revision_number"], "status": "ACTIVE"}}
    host_url = f"/v2.0/hosts/{NODE}"

    def placed(b: State, a: State, r: httpx.Response) -> bool:
        return rid in {item["id"] for item in r.json()["routers"]}

    def unplaced(b: State, a: State, r: httpx.Response) -> bool:  # its one host forgotten
        reason: str = _find(a.routers, rid).status_reason
        return reason.startswith("no agent reports")

    return {
        "router create": Action(
            ("create_router",),
            "POST",
            "/v2.0/routers",
            {"router": {"name": "new", "project_id": t.project}},
            201,
            lambda b, a, r: _find(a.routers, r.json()["router"]["id"]) is not None,
        ),
        "router create with id": Action(
            ("create_router", "create_router:id"),
            "POST",
            "/v2.0/routers",
            {"router": {"id": new_id, "name": "new", "project_id": t.project}},
            201,
            lambda b, a, r: _find(a.routers, new_id) is not None,
        ),
        "router list": Action(
            ("get_router",), "GET", "/v2.0/routers", None, 200, _read_only, "routers", rid
        ),
        "router show": Action(("get_router",), "GET", router_url, None, 200, _shows("router", rid)),
        "router kernel state": Action(
            ("get_router_kernel_state",),
            "GET",
            f"{router_url}/kernel_state",
            None,
            200,
            lambda b, a, r: b == a and r.json()["kernel_state"]["router_id"] == rid,
        ),
        "router update": Action(
            ("update_router",),
            "PUT",
            router_url,
            {"router": {"name": "renamed"}},
            200,
            lambda b, a, r: _find(a.routers, rid).name == "renamed",
        ),
        "router delete": Action(
            ("delete_router",), "DELETE", router_url, None, 204, _gone("router", rid)
        ),
        # Nothing desired changes (no revision): the answer names the router.
        "router resync": Action(
            ("resync_router",),
            "POST",
            f"{router_url}/resync",
            {},
            202,
            lambda b, a, r: b == a and r.json()["resync"]["router_id"] == rid,
        ),
        "binding create": Action(
            (create,),
            "POST",
            helpers_url(rid),
            binding("udp", 69, "tftp"),
            201,
            _binding_is(None, 69, "tftp"),
        ),
        "binding list": Action(
            (get_binding,), "GET", helpers_url(rid), None, 200, _read_only, "conntrack_helpers", ftp
        ),
        "binding show": Action(
            (get_binding,),
            "GET",
            helpers_url(rid, ftp),
            None,
            200,
            _shows("conntrack_helper", ftp),
        ),
        "binding update": Action(
            (update,),
            "PUT",
            helpers_url(rid, ftp),
            {"conntrack_helper": {"port": 2121}},
            200,
            _binding_is(ftp, 2121, "ftp"),
        ),
        "binding delete": Action(
            (delete_binding,), "DELETE", helpers_url(rid, ftp), None, 204, _gone("binding", ftp)
        ),
        "high-risk binding create": Action(
            (create, create + risky),
            "POST",
            helpers_url(rid),
            binding("tcp", 6667, "irc"),
            201,
            _binding_is(None, 6667, "irc"),
        ),
        "high-risk binding list": Action(
            (get_binding,), "GET", helpers_url(rid), None, 200, _read_only, "conntrack_helpers", sip
        ),
        "high-risk binding show": Action(
            (get_binding,),
            "GET",
            helpers_url(rid, sip),
            None,
            200,
            _shows("conntrack_helper", sip),
        ),
        "high-risk binding update": Action(  # ftp on tcp/21 becomes sip: an update TO high-risk
            (update, update + risky),
            "PUT",
            helpers_url(rid, ftp),
            {"conntrack_helper": {"helper": "sip"}},
            200,
            _binding_is(ftp, 21, "sip"),
        ),
        "high-risk binding delete": Action(
            (delete_binding,), "DELETE", helpers_url(rid, sip), None, 204, _gone("binding", sip)
        ),
        "status write": Action(
            ("update_router_status",), "PUT", f"{router_url}/status", status, 200, status_written
        ),
        "catalog read": Action(
            ("get_conntrack_helper_catalog",),
            "GET",
            "/v2.0/conntrack_helper_catalog",
            None,
            200,
            lambda b, a, r: b == a and len(r.json()["conntrack_helper_catalog"]) > 0,
        ),
        "token create": Action(
            ("create_auth_token",),
            "POST",
            "/v2.0/auth_tokens",
            {"auth_token": {"project_id": t.project, "roles": ["member"]}},
            201,
            token_created,
        ),
        "token list": Action(
            ("get_auth_token",),
            "GET",
            "/v2.0/auth_tokens",
            None,
            200,
            _read_only,
            "auth_tokens",
            t.token_id,
        ),
        "token show": Action(
            ("get_auth_token",), "GET", token_url, None, 200, _shows("auth_token", t.token_id)
        ),
        "token revoke": Action(
            ("delete_auth_token",), "DELETE", token_url, None, 204, token_revoked
        ),
        "audit list": Action(
            ("get_audit_events",),
            "GET",
            "/v2.0/audit_events",
            None,
            200,
            lambda b, a, r: b == a and len(r.json()["audit_events"]) > 0,
        ),
        "agent list": Action(
            ("get_agent",), "GET", "/v2.0/agents", None, 200, _read_only, "agents", AGENT_ID
        ),
        "metrics": Action(("get_metrics",), "GET", "/metrics", None, 200, _read_only),
        "agent show": Action(
            ("get_agent",), "GET", f"/v2.0/agents/{AGENT_ID}", None, 200, _shows("agent", AGENT_ID)
        ),
        "agent delete": Action(
            ("delete_agent",),
            "DELETE",
            f"/v2.0/agents/{node_agent_id(NODE)}?force=true",
            None,
            204,
            unplaced,
        ),
        "host report": Action(
            ("report_agent_state",),
            "PUT",
            f"{host_url}/agent",
            node_report(t.router["namespace"]),
            200,
            placed,
        ),
        "host routers list": Action(
            ("get_host_routers",),
            "GET",
            f"{host_url}/routers",
            None,
            200,
            _read_only,
            "routers",
            rid,
        ),
        "host router show": Action(
            ("get_host_routers",),
            "GET",
            f"{host_url}/routers/{rid}",
            None,
            200,
            _shows("router", rid),
        ),
        "host status write": Action(
            ("update_host_router_status",),
            "PUT",
            f"{host_url}/routers/{rid}/status",
            status,
            200,
            lambda b, a, r: _find(a.routers, rid).status == Status.ACTIVE,
        ),
        "host tombstone clear": Action(
            ("update_host_router_status",),
            "DELETE",
            f"{host_url}/tombstones/{rid}",
            None,
            204,
            _read_only,
        ),
        "watch": Action(
            ("watch_changes",),
            "GET",
            "/v2.0/watch?since=0&timeout=0",
            None,
            200,
            lambda b, a, r: b == a and rid in {e["router_id"] for e in r.json()["events"]},
        ),
    }


def observe(caller: Api, admin: Api, name: str, t: Targets) -> str:
    """What the caller's request did: ok, hidden, forbidden, or what went wrong instead."""
    action = actions(t)[name]
    before = state_of(admin)
    response = caller.request(action.method, action.url, json=action.body)
    after = state_of(admin)
    status = response.status_code
    if status in (403, 404):
        kind = error_of(response)["type"]
        if before != after:
            return f"{status} but the database changed"
        if status == 403 and kind == "PolicyNotAuthorized":
            return FORBIDDEN
        if status == 404 and kind.endswith("NotFound"):
            return HIDDEN
        return f"{status} {kind}"
    if status != action.ok_status:
        return f"unexpected {status}: {response.text[:200]}"
    if action.listed is not None:
        if before != after:
            return "a listing changed the database"
        shown = {item["id"] for item in response.json()[action.listed]}
        return OK if action.target_id in shown else HIDDEN
    return OK if action.effect(before, after, response) else f"{status} without the effect"


@pytest.fixture
def admin(api_factory: ApiFactory) -> Iterator[Api]:
    """The admin's API, its app given an agent as `cthm serve` gives it one (here a real agent,
    not started, over the in-memory nftables fake: the policy does not depend on the kernel)."""
    made: list[Agent] = []

    def install_agent(app: Any) -> None:
        store = app.state.cthm.store
        agent = Agent(LocalStoreSource(store), NftablesBackend(FakeNftables()), HelperCatalog())
        made.append(agent)

        def reports() -> list[AgentReport]:
            return [
                AgentReport(
                    id=AGENT_ID,
                    host="matrix-host",
                    backend="nftables",
                    chosen_by="configuration",
                    reason="set in the configuration",
                    iptables_flavour=None,
                    iptables_flavour_reason=None,
                    retired_backends=(),
                    snapshot=agent.snapshot(),
                )
            ]

        app.state.agents = reports

    yield api_factory(app_hook=install_agent)
    for agent in made:
        agent.stop()


@pytest.mark.parametrize("role", ROLES)
def test_policy_matrix(admin: Api, role: str) -> None:
    caller = admin.as_token(admin.issue_token(OWN, [role]))
    column = 2 * ROLES.index(role)
    wrong = []
    for name, row in EXPECTED.items():
        for project, expected in zip((OWN, OTHER), row[column : column + 2], strict=True):
            observed = observe(caller, admin, name, make_targets(admin, project))
            if observed != expected:
                scope = "own" if project == OWN else "other"
                wrong.append(f"{role:6} {name:26} {scope:5}: expected {expected}, got {observed}")
    assert not wrong, "\n" + "\n".join(wrong)


def test_the_matrix_covers_every_rule_of_the_policy(admin: Api) -> None:
    targets = make_targets(admin, OWN)
    exercised = {p for action in actions(targets).values() for p in action.policy_actions}
    assert set(EXPECTED) == set(actions(targets))
    assert exercised == set(policy.POLICY)


def test_a_principal_without_a_role_for_the_project_sees_nothing_of_it(admin: Api) -> None:
    """Roles are per project: a token of pa with every non-admin role reads nothing of pb."""
    theirs = make_targets(admin, OTHER)
    caller = admin.as_token(admin.issue_token(OWN, ["member", "reader"]))
    listed = caller.get("/v2.0/routers", params={"project_id": OTHER})
    assert listed.status_code == 200
    assert listed.json() == {"routers": []}
    assert caller.get(f"/v2.0/routers/{theirs.router['id']}").status_code == 404
