"""POST /v2.0/routers with an `id` (issue 16, adoption from Neutron): an admin registers a router
under an id of its choosing, Neutron's own, so that the default namespace `qrouter-<id>` is the
one Neutron's L3 agent made. Anyone else giving an id is refused (403), a malformed id is 400,
an id already taken 409; none of these changes anything."""

from __future__ import annotations

import uuid

import httpx
import pytest

from .support import JSON, Api, error_of

REQUEST_ID = "X-Openstack-Request-Id"


def _create(api: Api, **fields: object) -> httpx.Response:
    return api.post("/v2.0/routers", json={"router": {"name": "adopted", **fields}})


def _events(api: Api, response: httpx.Response) -> list[JSON]:
    listed = api.get("/v2.0/audit_events", params={"request_id": response.headers[REQUEST_ID]})
    assert listed.status_code == 200, listed.text
    found: list[JSON] = listed.json()["audit_events"]
    return found


def test_admin_creates_a_router_under_a_given_id(api: Api) -> None:
    router_id = str(uuid.uuid4())
    response = _create(api, id=router_id, project_id="p1")
    assert response.status_code == 201, response.text
    created = response.json()["router"]
    assert created["id"] == router_id
    assert created["namespace"] == f"qrouter-{router_id}"
    assert created["project_id"] == "p1"
    assert api.get(f"/v2.0/routers/{router_id}").json() == {"router": created}
    (event,) = _events(api, response)
    assert (event["action"], event["outcome"], event["status_code"]) == (
        "create_router",
        "success",
        201,
    )
    assert (event["target_id"], event["after"]["namespace"]) == (router_id, created["namespace"])


def test_a_given_id_is_stored_in_canonical_form(api: Api) -> None:
    router_id = uuid.uuid4()
    created = _create(api, id=str(router_id).upper(), project_id="p1")
    assert created.status_code == 201, created.text
    assert created.json()["router"]["id"] == str(router_id)
    assert created.json()["router"]["namespace"] == f"qrouter-{router_id}"


def test_a_given_id_with_an_explicit_namespace(api: Api) -> None:
    router_id = str(uuid.uuid4())
    created = _create(api, id=router_id, project_id="p1", namespace="edge-1")
    assert created.status_code == 201, created.text
    assert (created.json()["router"]["id"], created.json()["router"]["namespace"]) == (
        router_id,
        "edge-1",
    )


@pytest.mark.parametrize(
    "value",
    ["not-a-uuid", "", "{12345678-1234-1234-1234-123456789abc}", "12345678-1234", "qrouter-x"],
)
def test_a_malformed_id_is_refused(api: Api, value: str) -> None:
    response = _create(api, id=value, project_id="p1")
    assert response.status_code == 400, response.text
    assert error_of(response)["message"].startswith("Invalid input for id: ")
    assert "not a valid UUID" in error_of(response)["message"]
    assert api.snapshot().routers == []


def test_an_id_that_is_not_a_string_is_refused(api: Api) -> None:
    response = _create(api, id=12345, project_id="p1")
    assert response.status_code == 400, response.text
    assert api.snapshot().routers == []


def test_an_id_taken_is_a_conflict_and_changes_nothing(api: Api) -> None:
    router_id = str(uuid.uuid4())
    assert _create(api, id=router_id, project_id="p1").status_code == 201
    before = api.snapshot()
    # The same id, with the default namespace (also taken) and with another one: the id is
    # what the answer names.
    for extra in ({}, {"namespace": "elsewhere"}):
        again = _create(api, id=router_id, project_id="p2", **extra)
        assert again.status_code == 409, again.text
        error = error_of(again)
        assert (error["type"], error["message"]) == (
            "RouterExists",
            f"Router {router_id} already exists",
        )
    assert api.snapshot() == before


def test_the_id_of_a_deleted_router_can_be_registered_again(api: Api) -> None:
    router_id = str(uuid.uuid4())
    assert _create(api, id=router_id, project_id="p1").status_code == 201
    assert api.delete(f"/v2.0/routers/{router_id}").status_code == 204
    again = _create(api, id=router_id, project_id="p1")
    assert again.status_code == 201, again.text
    assert [r.id for r in api.snapshot().routers] == [router_id]


@pytest.mark.parametrize("role", ["member", "reader", "agent"])
def test_only_an_admin_may_give_an_id(api: Api, role: str) -> None:
    caller = api.as_token(api.issue_token("p1", [role]))
    # Well formed or not: the id is refused to a non-admin before it is judged.
    for value in (str(uuid.uuid4()), "not-a-uuid"):
        response = _create(caller, id=value, project_id="p1")
        assert response.status_code == 403, response.text
        error = error_of(response)
        assert error["type"] == "PolicyNotAuthorized"
        assert "only an admin may choose a router's id" in error["message"]
        (event,) = _events(api, response)
        assert (event["action"], event["outcome"]) == ("create_router:id", "denied")
    assert api.snapshot().routers == []
