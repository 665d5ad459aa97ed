"""/v2.0/routers/{id}/conntrack_helpers: CRUD, hostile input, the catalog, conflicts, and the
cross-router 404 (Neutron's IDOR)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .support import JSON, Api, ApiFactory, error_of, helpers_url

BINDING_KEYS = {
    "id",
    "protocol",
    "port",
    "helper",
    "direction",
    "router_id",
    "project_id",
    "status",
    "status_reason",
    "revision_number",
    "created_at",
    "updated_at",
}


def _send(api: Api, method: str, url: str, body: Any) -> Any:
    # json.dumps escapes what httpx's encoder refuses (a lone surrogate is valid JSON text).
    headers = {"Content-Type": "application/json"}
    return api.request(method, url, content=json.dumps(body), headers=headers)


def _post(api: Api, router_id: str, body: Any) -> Any:
    return _send(api, "POST", helpers_url(router_id), body)


def test_crud_round_trip(api: Api, router: JSON) -> None:
    rid = router["id"]
    response = _post(
        api, rid, {"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}}
    )
    assert response.status_code == 201
    created = response.json()["conntrack_helper"]
    assert set(created) == BINDING_KEYS
    assert created["protocol"] == "udp"
    assert created["port"] == 69
    assert created["helper"] == "tftp"
    assert created["direction"] == "ingress"
    assert created["router_id"] == rid
    assert created["project_id"] == router["project_id"]
    assert created["status"] == "PENDING"
    assert created["revision_number"] == 1
    assert created["created_at"].endswith("Z")

    shown = api.get(helpers_url(rid, created["id"]))
    assert shown.status_code == 200
    assert shown.json() == {"conntrack_helper": created}
    assert api.get(helpers_url(rid)).json() == {"conntrack_helpers": [created]}

    updated = api.put(helpers_url(rid, created["id"]), json={"conntrack_helper": {"port": 6969}})
    assert updated.status_code == 200
    body = updated.json()["conntrack_helper"]
    assert (body["protocol"], body["port"], body["helper"]) == ("udp", 6969, "tftp")
    assert body["revision_number"] == 2
    assert body["status"] == "PENDING"
    assert body["created_at"] == created["created_at"]
    assert api.get(helpers_url(rid, created["id"])).json() == {"conntrack_helper": body}

    deleted = api.delete(helpers_url(rid, created["id"]))
    assert deleted.status_code == 204
    assert deleted.content == b""
    gone = api.get(helpers_url(rid, created["id"]))
    assert gone.status_code == 404
    assert error_of(gone)["type"] == "ConntrackHelperNotFound"
    assert api.get(helpers_url(rid)).json() == {"conntrack_helpers": []}


def test_update_all_three_fields_at_once(api: Api, router: JSON) -> None:
    binding = api.create_helper(router["id"], "tcp", 21, "ftp")
    response = api.put(
        helpers_url(router["id"], binding["id"]),
        json={"conntrack_helper": {"protocol": "udp", "port": 5060, "helper": "sip"}},
    )
    assert response.status_code == 200
    body = response.json()["conntrack_helper"]
    assert (body["protocol"], body["port"], body["helper"]) == ("udp", 5060, "sip")


def test_update_with_no_change_does_not_bump_revision(api: Api, router: JSON) -> None:
    binding = api.create_helper(router["id"], "tcp", 21, "ftp")
    before = api.snapshot()
    for change in ({}, {"port": 21}, {"protocol": "tcp", "helper": "ftp"}):
        response = api.put(
            helpers_url(router["id"], binding["id"]), json={"conntrack_helper": change}
        )
        assert response.status_code == 200
        assert response.json()["conntrack_helper"]["revision_number"] == 1
    assert api.snapshot() == before


def test_h323_alias_resolves_by_protocol(api: Api, router: JSON) -> None:
    udp = api.create_helper(router["id"], "udp", 1719, "h323")
    tcp = api.create_helper(router["id"], "tcp", 1720, "h323")
    assert udp["helper"] == tcp["helper"] == "h323"  # shown as the user wrote it
    catalog = api.get("/v2.0/conntrack_helper_catalog").json()["conntrack_helper_catalog"]
    kernel = {(e["helper"], e["protocol"]): e["kernel_helper"] for e in catalog}
    assert kernel[("h323", "udp")] == "RAS"
    assert kernel[("h323", "tcp")] == "Q.931"
    # The alias and the kernel name are one helper: the same (protocol, port) conflicts.
    response = _post(
        api, router["id"], {"conntrack_helper": {"protocol": "udp", "port": 1719, "helper": "RAS"}}
    )
    assert response.status_code == 409
    assert udp["id"] in error_of(response)["message"]


def test_amanda_over_tcp_is_refused_with_the_reason(api: Api, router: JSON) -> None:
    response = _post(
        api,
        router["id"],
        {"conntrack_helper": {"protocol": "tcp", "port": 10080, "helper": "amanda"}},
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "InvalidInput"
    assert "amanda" in error["message"]
    assert "only udp" in error["message"]
    assert api.snapshot().bindings == []


def test_duplicate_protocol_port_is_409_naming_the_existing_binding(api: Api, router: JSON) -> None:
    existing = api.create_helper(router["id"], "tcp", 21, "ftp")
    before = api.snapshot()
    response = _post(
        api, router["id"], {"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "sip"}}
    )
    assert response.status_code == 409
    error = error_of(response)
    assert error["type"] == "ConntrackHelperConflict"
    assert existing["id"] in error["message"]
    assert api.snapshot() == before
    # The same port over the other protocol is another connection: allowed.
    api.create_helper(router["id"], "udp", 21, "tftp")
    # The same (protocol, port) on another router is allowed too.
    other = api.create_router(name="other")
    api.create_helper(other["id"], "tcp", 21, "ftp")


def test_duplicate_on_update_is_409_naming_the_existing_binding(api: Api, router: JSON) -> None:
    ftp = api.create_helper(router["id"], "tcp", 21, "ftp")
    other = api.create_helper(router["id"], "tcp", 2121, "ftp")
    before = api.snapshot()
    response = api.put(
        helpers_url(router["id"], other["id"]), json={"conntrack_helper": {"port": 21}}
    )
    assert response.status_code == 409
    assert ftp["id"] in error_of(response)["message"]
    assert api.snapshot() == before


def test_binding_of_another_router_is_404_and_nothing_changes(api: Api) -> None:
    mine = api.create_router(name="mine", project_id="p1")
    theirs = api.create_router(name="theirs", project_id="p2")
    their_binding = api.create_helper(theirs["id"], "tcp", 21, "ftp")
    api.create_helper(mine["id"], "udp", 69, "tftp")
    before = api.snapshot()
    wrong_url = helpers_url(mine["id"], their_binding["id"])
    for method, body in (
        ("GET", None),
        ("PUT", {"conntrack_helper": {"port": 2121}}),
        ("DELETE", None),
    ):
        response = api.request(method, wrong_url, json=body)
        assert response.status_code == 404, (method, response.text)
        error = error_of(response)
        assert error["type"] == "ConntrackHelperNotFound"
        assert theirs["id"] not in error["message"]  # says nothing about the real owner
    assert api.snapshot() == before
    listed = api.get(helpers_url(mine["id"])).json()["conntrack_helpers"]
    assert their_binding["id"] not in [b["id"] for b in listed]
    # Filtering the listing by the other router's id does not reach into it either.
    filtered = api.get(helpers_url(mine["id"]), params={"router_id": theirs["id"]})
    assert filtered.json() == {"conntrack_helpers": []}


def test_binding_id_that_is_not_a_uuid_is_404(api: Api, router: JSON) -> None:
    for bad in ("abc", "1; DROP TABLE conntrack_helpers", "a" * 3000, "\u2603"):
        for method, body in (
            ("GET", None),
            ("PUT", {"conntrack_helper": {"port": 2121}}),
            ("DELETE", None),
        ):
            response = api.request(method, helpers_url(router["id"], bad), json=body)
            assert response.status_code == 404
            assert error_of(response)["type"] == "ConntrackHelperNotFound"


def test_bindings_of_an_unknown_router_are_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    body = {"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "ftp"}}
    for method, url, payload in (
        ("GET", helpers_url(missing), None),
        ("POST", helpers_url(missing), body),
        ("GET", helpers_url(missing, str(uuid.uuid4())), None),
        ("PUT", helpers_url(missing, str(uuid.uuid4())), {"conntrack_helper": {"port": 1}}),
        ("DELETE", helpers_url(missing, str(uuid.uuid4())), None),
    ):
        response = api.request(method, url, json=payload)
        assert response.status_code == 404, (method, url)
        assert error_of(response)["type"] == "RouterNotFound"


def test_project_id_in_create_must_be_the_routers(api: Api, router: JSON) -> None:
    ok = {"protocol": "tcp", "port": 21, "helper": "ftp", "project_id": router["project_id"]}
    assert _post(api, router["id"], {"conntrack_helper": ok}).status_code == 201
    ok_tenant = {"protocol": "tcp", "port": 22, "helper": "ftp", "tenant_id": router["project_id"]}
    assert _post(api, router["id"], {"conntrack_helper": ok_tenant}).status_code == 201
    before = api.snapshot()
    for key in ("project_id", "tenant_id"):
        bad = {"protocol": "tcp", "port": 23, "helper": "ftp", key: "someone-else"}
        response = _post(api, router["id"], {"conntrack_helper": bad})
        assert response.status_code == 400
        assert key in error_of(response)["message"]
    assert api.snapshot() == before


def test_update_validates_the_combined_result(api: Api, router: JSON) -> None:
    binding = api.create_helper(router["id"], "udp", 69, "tftp")
    url = helpers_url(router["id"], binding["id"])
    before = api.snapshot()
    # Each change alone is a valid value, but tftp over tcp does not exist.
    response = api.put(url, json={"conntrack_helper": {"protocol": "tcp"}})
    assert response.status_code == 400
    assert "tftp" in error_of(response)["message"]
    response = api.put(url, json={"conntrack_helper": {"helper": "ftp"}})
    assert response.status_code == 400
    assert api.snapshot() == before
    response = api.put(url, json={"conntrack_helper": {"protocol": "tcp", "helper": "ftp"}})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", str(uuid.uuid4())),
        ("router_id", str(uuid.uuid4())),
        ("project_id", "p1"),
        ("tenant_id", "p1"),
        ("status", "ACTIVE"),
        ("status_reason", ""),
        ("revision_number", 3),
        ("created_at", "2020-01-01T00:00:00Z"),
        ("updated_at", "2020-01-01T00:00:00Z"),
    ],
)
def test_update_refuses_read_only_attributes(
    api: Api, router: JSON, field: str, value: object
) -> None:
    binding = api.create_helper(router["id"])
    before = api.snapshot()
    response = api.put(
        helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {field: value}}
    )
    assert response.status_code == 400
    assert f"cannot update read-only attribute {field}" in error_of(response)["message"]
    assert api.snapshot() == before


def test_allow_list_narrows_what_may_be_bound(api_factory: ApiFactory) -> None:
    api = api_factory(allowed_helpers=["tftp", "sip:udp"])
    router = api.create_router()
    api.create_helper(router["id"], "udp", 69, "tftp")
    api.create_helper(router["id"], "udp", 5060, "sip")
    before = api.snapshot()
    for protocol, port, helper in (("tcp", 21, "ftp"), ("tcp", 5060, "sip")):
        body = {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}
        response = _post(api, router["id"], body)
        assert response.status_code == 400
        message = error_of(response)["message"]
        assert "not allowed on this deployment" in message
        assert "sip/udp" in message
        assert "tftp/udp" in message
    assert api.snapshot() == before
    catalog = api.get("/v2.0/conntrack_helper_catalog").json()["conntrack_helper_catalog"]
    assert [(e["helper"], e["protocol"]) for e in catalog] == [("sip", "udp"), ("tftp", "udp")]


# --- hostile and wrong input, table-driven --------------------------------------------------

VALID = {"protocol": "tcp", "port": 21, "helper": "ftp"}

BAD_BINDINGS: list[tuple[str, dict[str, Any], str]] = [
    ("port as string", {**VALID, "port": "21"}, "port: must be an integer, not a string"),
    ("port as bool", {**VALID, "port": True}, "port: must be an integer, not a boolean"),
    ("port as float", {**VALID, "port": 1.5}, "port: must be an integer, not a number"),
    ("port as integral float", {**VALID, "port": 21.0}, "port: must be an integer"),
    ("port null", {**VALID, "port": None}, "port: must be an integer, not null"),
    ("port as list", {**VALID, "port": [21]}, "port: must be an integer, not an array"),
    ("port zero", {**VALID, "port": 0}, "port: 0 is out of range 1-65535"),
    ("port negative", {**VALID, "port": -21}, "out of range"),
    ("port too big", {**VALID, "port": 65536}, "out of range"),
    ("port huge", {**VALID, "port": 10**30}, "out of range"),
    ("protocol unknown", {**VALID, "protocol": "sctp"}, "not a supported protocol"),
    ("protocol uppercase", {**VALID, "protocol": "TCP"}, "not a supported protocol"),
    ("protocol as int", {**VALID, "protocol": 6}, "protocol: must be a string, not an integer"),
    ("helper unknown", {**VALID, "helper": "http"}, "unknown helper"),
    ("helper wrong protocol", {**VALID, "protocol": "udp"}, "ftp does not support udp"),
    ("tftp over tcp", {**VALID, "helper": "tftp"}, "tftp does not support tcp"),
    ("h323 wrong case", {**VALID, "helper": "H323"}, "unknown helper"),
    ("helper empty", {**VALID, "helper": ""}, "unknown helper"),
    ("helper shell", {**VALID, "helper": "ftp; rm -rf /"}, "unknown helper"),
    ("helper subshell", {**VALID, "helper": "$(id)`id`"}, "unknown helper"),
    ("helper newline", {**VALID, "helper": "ftp\nudp dport 1 drop"}, "unknown helper"),
    ("helper nft injection", {**VALID, "helper": 'ftp" ; flush ruleset'}, "unknown helper"),
    ("helper long", {**VALID, "helper": "x" * 100_00}, "unknown helper"),
    ("helper unicode", {**VALID, "helper": "ftp\u200b"}, "unknown helper"),
    ("helper nul", {**VALID, "helper": "ftp\x00"}, "unknown helper"),
    ("helper surrogate", {**VALID, "helper": "\ud800"}, "unknown helper"),
    ("helper as list", {**VALID, "helper": ["ftp"]}, "helper: must be a string"),
    ("missing port", {"protocol": "tcp", "helper": "ftp"}, "port: field is required"),
    ("missing all", {}, "field is required"),
    ("unknown field", {**VALID, "priority": 1}, "unknown field 'priority'"),
    ("unknown field hostile", {**VALID, "a\nb" * 50: 1}, "unknown field"),
    ("body as list", [VALID], "must be a JSON object, not an array"),  # type: ignore[list-item]
    ("body as string", "ftp", "must be a JSON object, not a string"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("inner", "expected"),
    [pytest.param(inner, expected, id=name) for name, inner, expected in BAD_BINDINGS],
)
def test_bad_binding_is_400_with_a_clear_message(
    api: Api, router: JSON, inner: Any, expected: str
) -> None:
    existing = api.create_helper(router["id"], "udp", 69, "tftp")
    before = api.snapshot()
    response = _post(api, router["id"], {"conntrack_helper": inner})
    assert response.status_code == 400, response.text
    message = error_of(response)["message"]
    assert expected in message
    assert len(message) < 400
    assert "\n" not in message
    # PUT with the same fields (where a PUT may carry them) is refused the same way.
    if isinstance(inner, dict) and "required" not in expected:
        url = helpers_url(router["id"], existing["id"])
        put = _send(api, "PUT", url, {"conntrack_helper": inner})
        assert put.status_code == 400, put.text
    assert api.snapshot() == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"conntrack_helpers": VALID},
        {"conntrack_helper": VALID, "extra": 1},
        {"conntrack_helper": None},
        {"conntrack_helper": []},
        {"conntrack_helper": "tcp/21/ftp"},
        [],
        None,
        42,
    ],
)
def test_bad_envelope_is_400(api: Api, router: JSON, body: Any) -> None:
    response = _post(api, router["id"], body)
    assert response.status_code == 400, response.text
    error_of(response)
    assert api.snapshot().bindings == []


def test_null_in_update_is_400(api: Api, router: JSON) -> None:
    binding = api.create_helper(router["id"])
    response = api.put(
        helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {"port": None}}
    )
    assert response.status_code == 400
    assert "port may not be null" in error_of(response)["message"]
