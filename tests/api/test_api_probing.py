"""Cross-project probing: a member or reader of project A, holding the ids of project B's routers
and bindings, tries them through every route.

Each answer must be the 404 an unknown id gets, byte for byte (apart from the id itself), so the
ids tell the caller nothing; nothing in the database may change; and the audit trail records
each attempt as denied.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import pytest

from .support import JSON, Api, ApiFactory, helpers_url, state_of

OWN, OTHER = "pa", "pb"


@dataclass(frozen=True)
class Probe:
    method: str
    url: str
    body: JSON | None = None
    headers: Mapping[str, str] | None = None


@dataclass
class World:
    admin: Api
    mine: JSON  # a router of project A (the caller's)
    my_binding: JSON
    theirs: JSON  # a router of project B
    their_ftp: JSON
    their_sip: JSON


def _world(api_factory: ApiFactory) -> World:
    admin = api_factory()
    mine = admin.create_router(name="mine", project_id=OWN)
    my_binding = admin.create_helper(mine["id"], "tcp", 21, "ftp")
    theirs = admin.create_router(name="theirs", project_id=OTHER)
    their_ftp = admin.create_helper(theirs["id"], "tcp", 21, "ftp")
    their_sip = admin.create_helper(theirs["id"], "udp", 5060, "sip")
    return World(admin, mine, my_binding, theirs, their_ftp, their_sip)


def _probes(w: World) -> list[Probe]:
    """Every route that takes a router or binding id, with project B's ids in it."""
    rid, ftp, sip = w.theirs["id"], w.their_ftp["id"], w.their_sip["id"]
    mine = w.mine["id"]
    router_url = f"/v2.0/routers/{rid}"
    stale = {"If-Match": "revision_number=999"}  # a precondition must not answer first
    status = {
        "status": {
            "revision_number": w.theirs["revision_number"],
            "status": "ERROR",
            "conntrack_helpers": [{"id": ftp, "revision_number": 1, "status": "ERROR"}],
        }
    }
    binding = {"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}}
    risky = {"conntrack_helper": {"protocol": "tcp", "port": 5060, "helper": "sip"}}
    return [
        Probe("GET", router_url),
        Probe("GET", f"{router_url}?fields=name"),
        Probe("GET", f"/v2.0/routers/{rid.upper()}"),
        Probe("GET", f"/v2.0/routers/{rid.replace('-', '')}"),
        Probe("PUT", router_url, {"router": {"name": "taken"}}),
        Probe("PUT", router_url, {"router": {"name": "taken"}}, stale),
        Probe("DELETE", router_url),
        Probe("DELETE", router_url, headers=stale),
        Probe("GET", helpers_url(rid)),
        Probe("POST", helpers_url(rid), binding),
        Probe("POST", helpers_url(rid), risky),
        Probe("GET", helpers_url(rid, ftp)),
        Probe("GET", helpers_url(rid, sip)),
        Probe("PUT", helpers_url(rid, ftp), {"conntrack_helper": {"port": 2121}}),
        Probe("PUT", helpers_url(rid, ftp), {"conntrack_helper": {"helper": "irc"}}, stale),
        Probe("DELETE", helpers_url(rid, ftp)),
        Probe("DELETE", helpers_url(rid, sip), headers=stale),
        Probe("PUT", f"{router_url}/status", status),
        # Their bindings through a router of my own (Neutron's bug: bindings loaded by id alone).
        Probe("GET", helpers_url(mine, ftp)),
        Probe("PUT", helpers_url(mine, ftp), {"conntrack_helper": {"port": 2121}}),
        Probe("DELETE", helpers_url(mine, sip)),
    ]


def _same_probe_with_unknown_ids(probe: Probe, ids: Mapping[str, str]) -> Probe:
    url = probe.url
    body = None if probe.body is None else _replace_in(probe.body, ids)
    for known, unknown in ids.items():
        url = url.replace(known, unknown)
        url = url.replace(known.upper(), unknown.upper())
        url = url.replace(known.replace("-", ""), unknown.replace("-", ""))
    return Probe(probe.method, url, body, probe.headers)


def _replace_in(value: object, ids: Mapping[str, str]) -> JSON:
    text = httpx.Response(200, json=value).text
    for known, unknown in ids.items():
        text = text.replace(known, unknown)
    replaced: JSON = httpx.Response(200, content=text).json()
    return replaced


def _normalised(response: httpx.Response, ids: Mapping[str, str], placeholder_of: str) -> bytes:
    """The body with each id (known or unknown) replaced by its placeholder."""
    body = response.content
    for index, value in enumerate(ids if placeholder_of == "known" else ids.values()):
        body = body.replace(value.encode(), f"<id{index}>".encode())
    return body


def _send(api: Api, probe: Probe) -> httpx.Response:
    return api.request(probe.method, probe.url, json=probe.body, headers=probe.headers)


@pytest.mark.parametrize("role", ["member", "reader"])
def test_another_projects_ids_are_unknown_ids_through_every_route(
    api_factory: ApiFactory, role: str
) -> None:
    w = _world(api_factory)
    caller = w.admin.as_token(w.admin.issue_token(OWN, [role]))
    their_ids = [w.theirs["id"], w.their_ftp["id"], w.their_sip["id"]]
    unknown = {known: str(uuid.uuid4()) for known in their_ids}
    before = state_of(w.admin)

    answered = []
    for probe in _probes(w):
        response = _send(caller, probe)
        control = _send(caller, _same_probe_with_unknown_ids(probe, unknown))
        where = (probe.method, probe.url)
        assert response.status_code == 404, (where, response.text)
        assert control.status_code == 404, (where, control.text)
        assert _normalised(response, unknown, "known") == _normalised(control, unknown, "unknown")
        assert response.headers["content-type"] == control.headers["content-type"]
        answered.append((probe, response.headers["X-Openstack-Request-Id"]))

    assert state_of(w.admin) == before

    # Every attempt is in the audit trail as denied, against project B, with the caller's token.
    listed = w.admin.get("/v2.0/audit_events", params={"outcome": "denied", "limit": 1000})
    assert listed.status_code == 200
    events = {e["request_id"]: e for e in listed.json()["audit_events"]}
    callers = set()
    for probe, request_id in answered:
        event = events.get(request_id)
        assert event is not None, f"no audit record of {probe.method} {probe.url}"
        assert event["status_code"] == 404
        assert event["target_project_id"] == OTHER
        assert event["project_id"] == OWN
        assert event["target_id"] in their_ids
        callers.add(event["token_id"])
    assert len(callers) == 1
    assert None not in callers


@pytest.mark.parametrize("role", ["member", "reader"])
def test_listings_and_filters_do_not_reveal_another_project(
    api_factory: ApiFactory, role: str
) -> None:
    w = _world(api_factory)
    caller = w.admin.as_token(w.admin.issue_token(OWN, [role]))
    mine, theirs = w.mine["id"], w.theirs["id"]
    for params in (
        {},
        {"id": theirs},
        {"project_id": OTHER},
        {"tenant_id": OTHER},
        {"name": "theirs"},
        {"namespace": w.theirs["namespace"]},
    ):
        listed = caller.get("/v2.0/routers", params=params)
        assert listed.status_code == 200, listed.text
        assert theirs not in listed.text
        assert w.their_ftp["id"] not in listed.text
    own = caller.get("/v2.0/routers").json()["routers"]
    assert [r["id"] for r in own] == [mine]

    for params in ({"id": w.their_ftp["id"]}, {"router_id": theirs}, {"project_id": OTHER}):
        bindings = caller.get(helpers_url(mine), params=params)
        assert bindings.status_code == 200, bindings.text
        assert bindings.json() == {"conntrack_helpers": []}


def test_an_agent_and_an_admin_see_every_project(api_factory: ApiFactory) -> None:
    """The other side of the same rule: the roles that span projects do see project B."""
    w = _world(api_factory)
    agent = w.admin.as_token(w.admin.issue_token("agents", ["agent"]))
    for api in (agent, w.admin):
        listed = {r["id"] for r in api.get("/v2.0/routers").json()["routers"]}
        assert listed == {w.mine["id"], w.theirs["id"]}
        shown = api.get(helpers_url(w.theirs["id"], w.their_ftp["id"]))
        assert shown.status_code == 200
