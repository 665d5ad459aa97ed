"""/v2.0/routers: CRUD round trips, read-only attributes, revisions, deletion of bindings."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import pytest

from .support import JSON, Api, error_of, helpers_url

ROUTER_KEYS = {
    "id",
    "name",
    "project_id",
    "tenant_id",
    "namespace",
    "status",
    "status_reason",
    "revision_number",
    "created_at",
    "updated_at",
    "conntrack_helpers",
    "hosts",
}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


def test_create_show_list_update_delete_round_trip(api: Api) -> None:
    response = api.post("/v2.0/routers", json={"router": {"name": "edge", "project_id": "p1"}})
    assert response.status_code == 201
    created = response.json()["router"]
    assert set(created) == ROUTER_KEYS
    assert uuid.UUID(created["id"]).version == 4
    assert created["name"] == "edge"
    assert created["project_id"] == created["tenant_id"] == "p1"
    assert created["namespace"] == f"qrouter-{created['id']}"
    assert created["status"] == "PENDING"
    assert created["status_reason"] == ""
    assert created["revision_number"] == 1
    assert created["conntrack_helpers"] == []
    for key in ("created_at", "updated_at"):
        assert TIMESTAMP.fullmatch(created[key]), created[key]
    assert created["created_at"] == created["updated_at"]

    shown = api.get(f"/v2.0/routers/{created['id']}")
    assert shown.status_code == 200
    assert shown.json() == {"router": created}

    listed = api.get("/v2.0/routers")
    assert listed.status_code == 200
    assert listed.json() == {"routers": [created]}

    updated = api.put(f"/v2.0/routers/{created['id']}", json={"router": {"name": "edge-2"}})
    assert updated.status_code == 200
    body = updated.json()["router"]
    assert body["name"] == "edge-2"
    assert body["revision_number"] == 2
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(
        created["updated_at"]
    )
    assert {
        k: v for k, v in body.items() if k not in ("name", "revision_number", "updated_at")
    } == {k: v for k, v in created.items() if k not in ("name", "revision_number", "updated_at")}
    assert api.get(f"/v2.0/routers/{created['id']}").json() == {"router": body}

    deleted = api.delete(f"/v2.0/routers/{created['id']}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    gone = api.get(f"/v2.0/routers/{created['id']}")
    assert gone.status_code == 404
    assert error_of(gone)["type"] == "RouterNotFound"
    assert api.get("/v2.0/routers").json() == {"routers": []}
    assert api.snapshot().routers == []


def test_create_with_explicit_namespace_and_tenant_id(api: Api) -> None:
    body = {"router": {"name": "legacy", "tenant_id": "p2", "namespace": "ns-legacy_1.a"}}
    created = api.post("/v2.0/routers", json=body).json()["router"]
    assert created["project_id"] == created["tenant_id"] == "p2"
    assert created["namespace"] == "ns-legacy_1.a"


def test_create_defaults_name_and_project_to_the_caller(api: Api) -> None:
    response = api.post("/v2.0/routers", json={"router": {}})
    assert response.status_code == 201
    created = response.json()["router"]
    assert created["name"] == ""
    assert created["project_id"] == "admin"  # the local administrator's project


def test_project_id_and_tenant_id_must_agree(api: Api) -> None:
    response = api.post(
        "/v2.0/routers", json={"router": {"name": "x", "project_id": "a", "tenant_id": "b"}}
    )
    assert response.status_code == 400
    assert "tenant_id" in error_of(response)["message"]
    agreeing = api.post(
        "/v2.0/routers", json={"router": {"name": "x", "project_id": "a", "tenant_id": "a"}}
    )
    assert agreeing.status_code == 201


def test_namespace_in_use_is_409_naming_the_router(api: Api) -> None:
    first = api.create_router(namespace="shared-ns")
    before = api.snapshot()
    response = api.post("/v2.0/routers", json={"router": {"name": "b", "namespace": "shared-ns"}})
    assert response.status_code == 409
    error = error_of(response)
    assert error["type"] == "NamespaceInUse"
    assert first["id"] in error["message"]
    assert api.snapshot() == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Not "id": an admin may give one (test_api_router_id.py).
        ("status", "ACTIVE"),
        ("status_reason", "x"),
        ("revision_number", 7),
        ("created_at", "2020-01-01T00:00:00Z"),
        ("updated_at", "2020-01-01T00:00:00Z"),
        ("conntrack_helpers", []),
    ],
)
def test_create_refuses_server_set_attributes(api: Api, field: str, value: object) -> None:
    response = api.post("/v2.0/routers", json={"router": {"name": "x", field: value}})
    assert response.status_code == 400
    assert f"cannot set read-only attribute {field}" in error_of(response)["message"]
    assert api.snapshot().routers == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", str(uuid.uuid4())),
        ("project_id", "other"),
        ("tenant_id", "other"),
        ("namespace", "other-ns"),
        ("status", "ACTIVE"),
        ("status_reason", ""),
        ("revision_number", 9),
        ("created_at", "2020-01-01T00:00:00Z"),
        ("updated_at", "2020-01-01T00:00:00Z"),
        ("conntrack_helpers", []),
    ],
)
def test_update_refuses_read_only_attributes(
    api: Api, router: JSON, field: str, value: object
) -> None:
    before = api.snapshot()
    response = api.put(f"/v2.0/routers/{router['id']}", json={"router": {field: value}})
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        f"Invalid input for router: cannot update read-only attribute {field}"
    )
    assert api.snapshot() == before


def test_update_with_same_name_or_empty_body_changes_nothing(api: Api, router: JSON) -> None:
    before = api.snapshot()
    same = api.put(f"/v2.0/routers/{router['id']}", json={"router": {"name": router["name"]}})
    assert same.status_code == 200
    assert same.json()["router"]["revision_number"] == 1
    empty = api.put(f"/v2.0/routers/{router['id']}", json={"router": {}})
    assert empty.status_code == 200
    assert empty.json()["router"] == same.json()["router"]
    assert api.snapshot() == before


def test_router_body_lists_its_conntrack_helpers(api: Api, router: JSON) -> None:
    ftp = api.create_helper(router["id"], "tcp", 21, "ftp")
    tftp = api.create_helper(router["id"], "udp", 69, "tftp")
    shown = api.get(f"/v2.0/routers/{router['id']}").json()["router"]
    assert sorted(shown["conntrack_helpers"], key=lambda h: h["port"]) == [
        {"id": ftp["id"], "protocol": "tcp", "port": 21, "helper": "ftp", "direction": "ingress"},
        {
            "id": tftp["id"],
            "protocol": "udp",
            "port": 69,
            "helper": "tftp",
            "direction": "ingress",
        },
    ]
    other = api.create_router(name="other")
    listed = {r["id"]: r for r in api.get("/v2.0/routers").json()["routers"]}
    assert listed[router["id"]]["conntrack_helpers"] == shown["conntrack_helpers"]
    assert listed[other["id"]]["conntrack_helpers"] == []


def test_revision_number_bumps_on_every_user_change(api: Api, router: JSON) -> None:
    rid = router["id"]

    def revision() -> int:
        value: int = api.get(f"/v2.0/routers/{rid}").json()["router"]["revision_number"]
        return value

    assert revision() == 1
    binding = api.create_helper(rid)
    assert binding["revision_number"] == 1
    assert revision() == 2
    moved = api.put(helpers_url(rid, binding["id"]), json={"conntrack_helper": {"port": 2121}})
    assert moved.json()["conntrack_helper"]["revision_number"] == 2
    assert revision() == 3
    api.put(f"/v2.0/routers/{rid}", json={"router": {"name": "renamed"}})
    assert revision() == 4
    assert api.delete(helpers_url(rid, binding["id"])).status_code == 204
    assert revision() == 5


def test_router_delete_removes_its_bindings(api: Api, router: JSON) -> None:
    keep = api.create_router(name="keep")
    kept = api.create_helper(keep["id"], "udp", 69, "tftp")
    bindings = [api.create_helper(router["id"], "tcp", port, "ftp") for port in (21, 2121)]
    assert api.delete(f"/v2.0/routers/{router['id']}").status_code == 204
    snapshot = api.snapshot()
    assert [b.id for b in snapshot.bindings] == [kept["id"]]
    for binding in bindings:
        response = api.get(helpers_url(router["id"], binding["id"]))
        assert response.status_code == 404
        assert error_of(response)["type"] == "RouterNotFound"
    listed = api.get(helpers_url(router["id"]))
    assert listed.status_code == 404


@pytest.mark.parametrize(
    "path_id",
    [
        "not-a-uuid",
        "...",  # ".." itself is resolved by the client before sending
        "%2E%2E",
        "' OR 1=1 --",
        "$(reboot)",
        "a" * 5000,
        "\u00e9\u00e9",
        "0" * 31,
        "{" + str(uuid.UUID(int=1)) + "}",
        "urn:uuid:" + str(uuid.UUID(int=1)),
    ],
)
def test_path_id_that_is_not_a_uuid_is_404(api: Api, router: JSON, path_id: str) -> None:
    for method, body in (("GET", None), ("PUT", {"router": {"name": "x"}}), ("DELETE", None)):
        response = api.request(method, f"/v2.0/routers/{path_id}", json=body)
        assert response.status_code == 404, (method, response.text)
        error = error_of(response)
        assert len(error["message"]) < 200
    assert api.get(f"/v2.0/routers/{router['id']}").json()["router"]["name"] == router["name"]


def test_uppercase_or_compact_uuid_names_the_same_router(api: Api, router: JSON) -> None:
    for form in (router["id"].upper(), router["id"].replace("-", "")):
        response = api.get(f"/v2.0/routers/{form}")
        assert response.status_code == 200
        assert response.json()["router"]["id"] == router["id"]


def test_unknown_router_is_404_on_every_method(api: Api) -> None:
    missing = str(uuid.uuid4())
    for method, body in (("GET", None), ("PUT", {"router": {"name": "x"}}), ("DELETE", None)):
        response = api.request(method, f"/v2.0/routers/{missing}", json=body)
        assert response.status_code == 404
        error = error_of(response)
        assert error["type"] == "RouterNotFound"
        assert missing in error["message"]


def test_if_match_revision_number(api: Api, router: JSON) -> None:
    url = f"/v2.0/routers/{router['id']}"
    stale = api.put(url, json={"router": {"name": "x"}}, headers={"If-Match": "revision_number=5"})
    assert stale.status_code == 412
    assert error_of(stale)["type"] == "PreconditionFailed"
    fresh = api.put(url, json={"router": {"name": "x"}}, headers={"If-Match": "revision_number=1"})
    assert fresh.status_code == 200
    bad = api.delete(url, headers={"If-Match": "revision_number=abc"})
    assert bad.status_code == 400
    stale_delete = api.delete(url, headers={"If-Match": "revision_number=1"})
    assert stale_delete.status_code == 412
    assert api.delete(url, headers={"If-Match": '"etag", revision_number=2'}).status_code == 204


BAD_ROUTERS: list[tuple[str, dict[str, object], str]] = [
    ("name newline", {"name": "a\nb"}, "name: contains a control"),
    ("name nul", {"name": "a\x00b"}, "name: contains a control"),
    ("name bidi override", {"name": "abc\u202e"}, "name: contains a control"),
    ("name too long", {"name": "n" * 256}, "name: is 256 characters long; at most 255"),
    ("name very long", {"name": "n" * 60_000}, "at most 255"),
    ("name as int", {"name": 5}, "name: must be a string, not an integer"),
    ("name null", {"name": None}, "name: must be a string, not null"),
    ("namespace shell", {"namespace": "ns; reboot"}, "namespace: must be"),
    ("namespace subshell", {"namespace": "$(id)"}, "namespace: must be"),
    ("namespace option", {"namespace": "-all"}, "namespace: must be"),
    ("namespace dotdot", {"namespace": ".."}, "namespace: must be"),
    ("namespace slash", {"namespace": "../../etc"}, "namespace: must be"),
    ("namespace newline", {"namespace": "ns\nx"}, "namespace: must be"),
    ("namespace unicode", {"namespace": "n\u00e9"}, "namespace: must be"),
    ("namespace too long", {"namespace": "n" * 65}, "namespace: must be"),
    ("namespace empty", {"namespace": ""}, "namespace: must be"),
    ("namespace as list", {"namespace": ["ns"]}, "namespace: must be a string"),
    ("project shell", {"project_id": "p;id"}, "project_id: must be"),
    ("project too long", {"project_id": "p" * 65}, "project_id: must be"),
    ("project as bool", {"project_id": True}, "project_id: must be a string, not a boolean"),
    ("unknown field", {"admin_state_up": True}, "unknown field 'admin_state_up'"),
    ("unknown unicode field", {"\u00e9t\u00e9": 1}, "unknown field '\u00e9t\u00e9'"),
]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [pytest.param(fields, expected, id=name) for name, fields, expected in BAD_ROUTERS],
)
def test_bad_router_is_400_with_a_clear_message(
    api: Api, fields: dict[str, object], expected: str
) -> None:
    existing = api.create_router(name="keep")
    before = api.snapshot()
    response = api.post("/v2.0/routers", json={"router": fields})
    assert response.status_code == 400, response.text
    message = error_of(response)["message"]
    assert expected in message
    assert len(message) < 400
    assert api.snapshot() == before
    if "name" in fields:  # the name is the one updatable field: PUT refuses the same values
        put = api.put(f"/v2.0/routers/{existing['id']}", json={"router": {"name": fields["name"]}})
        assert put.status_code == 400
        assert api.snapshot() == before


def test_unicode_names_are_kept(api: Api) -> None:
    for name in ("r\u00e9seau", "\u8def\u7531\u5668", "\U0001f680 edge", "a'b\"c;$(d)"):
        created = api.create_router(name=name)
        assert api.get(f"/v2.0/routers/{created['id']}").json()["router"]["name"] == name
