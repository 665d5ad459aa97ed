"""The policy module, and the request pipeline around the principal: what a project member or
reader may see and do once authentication (issue 4) provides principals other than the local
administrator. Principals are swapped through the one seam issue 4 replaces: `get_principal`."""

from __future__ import annotations

import pytest

from cthm.api import policy
from cthm.api.deps import get_principal
from cthm.api.errors import Forbidden
from cthm.api.principal import Principal, local_admin

from .support import Api, error_of, helpers_url

MEMBER_P1 = Principal(token_id="t1", project_id="p1", roles=frozenset({"member", "reader"}))
READER_P1 = Principal(token_id="t2", project_id="p1", roles=frozenset({"reader"}))
NOBODY_P1 = Principal(token_id="t3", project_id="p1", roles=frozenset())


def test_every_action_has_a_rule_and_unknown_actions_fail_closed() -> None:
    for action in policy.POLICY:
        assert policy.allowed(local_admin(), action, "any-project")
    with pytest.raises(LookupError):
        policy.enforce(local_admin(), "reboot_host", None)


@pytest.mark.parametrize(
    ("principal", "action", "target", "allowed"),
    [
        (MEMBER_P1, "create_router", "p1", True),
        (MEMBER_P1, "create_router", "p2", False),
        (MEMBER_P1, "create_router:namespace", "p1", False),
        (MEMBER_P1, "get_router", "p1", True),
        (MEMBER_P1, "get_router", "p2", False),
        (MEMBER_P1, "update_router_conntrack_helper", "p1", True),
        (READER_P1, "get_router_conntrack_helper", "p1", True),
        (READER_P1, "update_router", "p1", False),
        (READER_P1, "create_router_conntrack_helper", "p1", False),
        (NOBODY_P1, "get_router", "p1", False),
        (NOBODY_P1, "get_conntrack_helper_catalog", None, True),
        (MEMBER_P1, "get_router", None, True),  # a listing narrowed to the own project
    ],
)
def test_rules(principal: Principal, action: str, target: str | None, allowed: bool) -> None:
    assert policy.allowed(principal, action, target) is allowed
    if allowed:
        policy.enforce(principal, action, target)
    else:
        with pytest.raises(Forbidden) as raised:
            policy.enforce(principal, action, target)
        assert action in raised.value.message


def test_scope_of_listings() -> None:
    assert policy.list_scope(local_admin()) is None
    assert policy.list_scope(MEMBER_P1) == "p1"
    assert policy.can_see(local_admin(), "p9")
    assert policy.can_see(READER_P1, "p1")
    assert not policy.can_see(READER_P1, "p2")


def _act_as(api: Api, principal: Principal) -> None:
    api.client.app.dependency_overrides[get_principal] = lambda: principal  # type: ignore[attr-defined]


def test_a_project_sees_and_changes_only_its_own(api: Api) -> None:
    mine = api.create_router(name="mine", project_id="p1")
    theirs = api.create_router(name="theirs", project_id="p2")
    their_binding = api.create_helper(theirs["id"])
    _act_as(api, MEMBER_P1)

    listed = api.get("/v2.0/routers").json()["routers"]
    assert [r["id"] for r in listed] == [mine["id"]]
    other_project = api.get("/v2.0/routers", params={"project_id": "p2"}).json()
    assert other_project == {"routers": []}

    before = api.snapshot()
    for method, url, body in (
        ("GET", f"/v2.0/routers/{theirs['id']}", None),
        ("PUT", f"/v2.0/routers/{theirs['id']}", {"router": {"name": "mine now"}}),
        ("DELETE", f"/v2.0/routers/{theirs['id']}", None),
        ("GET", helpers_url(theirs["id"]), None),
        ("POST", helpers_url(theirs["id"]), {"conntrack_helper": _sip()}),
        ("GET", helpers_url(theirs["id"], their_binding["id"]), None),
        ("PUT", helpers_url(theirs["id"], their_binding["id"]), {"conntrack_helper": {}}),
        ("DELETE", helpers_url(theirs["id"], their_binding["id"]), None),
        ("GET", helpers_url(mine["id"], their_binding["id"]), None),
    ):
        response = api.request(method, url, json=body)
        assert response.status_code == 404, (method, url)  # never 403: existence does not leak
        assert error_of(response)["type"].endswith("NotFound")
    assert api.snapshot() == before

    created = api.post(helpers_url(mine["id"]), json={"conntrack_helper": _sip()})
    assert created.status_code == 201
    own = api.post("/v2.0/routers", json={"router": {"name": "own"}})
    assert own.status_code == 201
    assert own.json()["router"]["project_id"] == "p1"


def test_member_cannot_create_for_another_project_or_pick_a_namespace(api: Api) -> None:
    _act_as(api, MEMBER_P1)
    for router in ({"name": "x", "project_id": "p2"}, {"name": "x", "namespace": "qrouter-x"}):
        response = api.post("/v2.0/routers", json={"router": router})
        assert response.status_code == 403
        assert error_of(response)["type"] == "PolicyNotAuthorized"
    assert api.snapshot().routers == []


def test_reader_may_look_but_not_change(api: Api) -> None:
    router = api.create_router(name="r", project_id="p1")
    binding = api.create_helper(router["id"])
    _act_as(api, READER_P1)
    before = api.snapshot()
    assert api.get(f"/v2.0/routers/{router['id']}").status_code == 200
    assert api.get(helpers_url(router["id"], binding["id"])).status_code == 200
    for method, url, body in (
        ("PUT", f"/v2.0/routers/{router['id']}", {"router": {"name": "x"}}),
        ("DELETE", f"/v2.0/routers/{router['id']}", None),
        ("POST", helpers_url(router["id"]), {"conntrack_helper": _sip()}),
        ("DELETE", helpers_url(router["id"], binding["id"]), None),
    ):
        response = api.request(method, url, json=body)
        assert response.status_code == 403, (method, url)
        assert error_of(response)["type"] == "PolicyNotAuthorized"
    assert api.snapshot() == before


def _sip() -> dict[str, object]:
    return {"protocol": "udp", "port": 5060, "helper": "sip"}
