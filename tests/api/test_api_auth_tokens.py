"""/v2.0/auth_tokens: admins create, list, show and revoke tokens; nobody else can; the secret is
shown once and stored only as a hash."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from support.databases import PlainSql

from .support import JSON, Api, error_of

URL = "/v2.0/auth_tokens"
PUBLIC_KEYS = {
    "id",
    "project_id",
    "roles",
    "description",
    "created_at",
    "expires_at",
    "revoked_at",
    "created_by",
    "host",
}
SECRET = re.compile(r"cthm_[A-Za-z0-9_-]{43}")


def create(api: Api, **fields: Any) -> JSON:
    fields.setdefault("project_id", "p1")
    fields.setdefault("roles", ["member"])
    response = api.post(URL, json={"auth_token": fields})
    assert response.status_code == 201, response.text
    token: JSON = response.json()["auth_token"]
    return token


def future(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def database_rows(api: Api) -> list[tuple[Any, ...]]:
    return PlainSql(api.store.url)("SELECT * FROM auth_tokens")


def test_create_returns_the_secret_once_and_it_works(api: Api) -> None:
    created = create(api, roles=["member", "reader"], description="ci deploys")
    secret = created.pop("token")
    assert SECRET.fullmatch(secret)
    assert set(created) == PUBLIC_KEYS
    assert created["project_id"] == "p1"
    assert created["roles"] == ["member", "reader"]
    assert created["description"] == "ci deploys"
    assert created["expires_at"] is None
    assert created["revoked_at"] is None
    admin = api.get(URL, params={"project_id": "admin"}).json()["auth_tokens"]
    assert created["created_by"] == admin[0]["id"]  # the admin token that made it

    user = api.as_token(secret)
    mine = api.create_router(project_id="p1")
    api.create_router(project_id="p2")
    listed = user.get("/v2.0/routers").json()["routers"]
    assert [r["id"] for r in listed] == [mine["id"]]  # a member of p1 sees p1 only

    shown = api.get(f"{URL}/{created['id']}").json()["auth_token"]
    assert shown == created  # never the secret again
    listing = api.get(URL).text
    assert secret not in listing
    assert secret[:16] not in listing

    # Stored as its SHA-256 only.
    rows = database_rows(api)
    assert hashlib.sha256(secret.encode()).hexdigest() in {v for row in rows for v in row}
    assert not any(secret[:16] in str(v) for row in rows for v in row)


def test_secrets_are_random_and_distinct(api: Api) -> None:
    secrets = {create(api)["token"] for _ in range(20)}
    assert len(secrets) == 20
    assert all(SECRET.fullmatch(s) for s in secrets)


def test_expiry_and_listing_filters(api: Api) -> None:
    soon = create(api, project_id="p2", roles=["reader"], expires_at=future(days=30))
    assert soon["expires_at"].endswith("Z")
    expires = datetime.fromisoformat(soon["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    create(api, project_id="p3", roles=["agent"])

    by_project = api.get(URL, params={"project_id": "p2"}).json()["auth_tokens"]
    assert [t["id"] for t in by_project] == [soon["id"]]
    by_id = api.get(URL, params={"id": soon["id"], "fields": ["id", "roles"]}).json()
    assert by_id == {"auth_tokens": [{"id": soon["id"], "roles": ["reader"]}]}
    everyone = api.get(URL).json()["auth_tokens"]
    assert {t["project_id"] for t in everyone} == {"admin", "p2", "p3"}
    paged = api.get(URL, params={"limit": 1}).json()
    assert len(paged["auth_tokens"]) == 1
    assert paged["auth_tokens_links"][0]["rel"] == "next"
    assert api.get(URL, params={"secret_hash": "x"}).status_code == 400
    assert api.get(URL, params={"roles": "admin"}).status_code == 400


def test_revoke_stops_the_token_and_keeps_its_record(api: Api) -> None:
    created = create(api)
    user = api.as_token(created["token"])
    assert user.get("/v2.0/routers").status_code == 200

    assert api.delete(f"{URL}/{created['id']}").status_code == 204
    assert user.get("/v2.0/routers").status_code == 401
    record = api.get(f"{URL}/{created['id']}").json()["auth_token"]
    assert record["revoked_at"] is not None
    # Revoking again changes nothing (the first revocation time stays).
    assert api.delete(f"{URL}/{created['id']}").status_code == 204
    assert api.get(f"{URL}/{created['id']}").json()["auth_token"] == record


def test_unknown_ids_are_404(api: Api) -> None:
    for token_id in (str(uuid.uuid4()), "not-a-uuid", "cthm_" + "A" * 43):
        for method in ("GET", "DELETE"):
            response = api.request(method, f"{URL}/{token_id}")
            assert response.status_code == 404, (method, token_id)
            assert error_of(response)["type"] == "AuthTokenNotFound"


@pytest.mark.parametrize("role", ["member", "reader", "agent"])
def test_only_admins_manage_tokens(api: Api, role: str) -> None:
    victim = create(api, project_id="p1", roles=["admin"])
    caller = api.as_token(api.issue_token("p1", [role]))
    before = api.get(URL).json()
    for method, url, body in (
        ("POST", URL, {"auth_token": {"project_id": "p1", "roles": ["admin"]}}),
        ("POST", URL, {"auth_token": {"project_id": "p1", "roles": [role]}}),
        ("GET", URL, None),
        ("GET", f"{URL}/{victim['id']}", None),
        ("GET", f"{URL}/{uuid.uuid4()}", None),  # the same answer whether or not it exists
        ("DELETE", f"{URL}/{victim['id']}", None),
    ):
        response = caller.request(method, url, json=body)
        assert response.status_code == 403, (method, url, response.text)
        assert error_of(response)["type"] == "PolicyNotAuthorized"
    assert api.get(URL).json() == before
    assert api.as_token(victim["token"]).get("/v2.0/routers").status_code == 200


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"roles": ["member"]}, "project_id: field is required"),
        ({"project_id": "p1"}, "roles: field is required"),
        ({"project_id": "p1", "roles": []}, "non-empty list of roles"),
        ({"project_id": "p1", "roles": "admin"}, "must be an array"),
        ({"project_id": "p1", "roles": ["root"]}, "'root' is not a role"),
        ({"project_id": "p1", "roles": [1]}, "must be a string"),
        ({"project_id": "p1", "roles": ["reader"] * 17}, "roles"),
        ({"project_id": "p 1", "roles": ["reader"]}, "project_id"),
        ({"project_id": "", "roles": ["reader"]}, "project_id"),
        ({"project_id": "p1", "roles": ["reader"], "expires_at": "tomorrow"}, "ISO 8601"),
        ({"project_id": "p1", "roles": ["reader"], "expires_at": 1893456000}, "string"),
        (
            {"project_id": "p1", "roles": ["reader"], "expires_at": "2099-01-01T00:00:00"},
            "timezone",
        ),
        (
            {"project_id": "p1", "roles": ["reader"], "expires_at": "2001-01-01T00:00:00Z"},
            "must be in the future",
        ),
        (
            {"project_id": "p1", "roles": ["reader"], "expires_at": "9999-12-31T23:59:59-05:00"},
            "out of range",
        ),
        ({"project_id": "p1", "roles": ["reader"], "description": "a\nb"}, "description"),
        ({"project_id": "p1", "roles": ["reader"], "description": "x" * 256}, "description"),
        ({"project_id": "p1", "roles": ["reader"], "token": "cthm_x"}, "read-only"),
        ({"project_id": "p1", "roles": ["reader"], "id": str(uuid.uuid4())}, "read-only"),
        ({"project_id": "p1", "roles": ["reader"], "secret_hash": "00"}, "unknown field"),
        ({"project_id": "p1", "roles": ["reader"], "tenant_id": "p1"}, "unknown field"),
    ],
)
def test_create_refuses_bad_input(api: Api, fields: dict[str, Any], fragment: str) -> None:
    before = database_rows(api)
    response = api.post(URL, json={"auth_token": fields})
    assert response.status_code == 400, response.text
    assert fragment in error_of(response)["message"]
    assert database_rows(api) == before


def test_create_refuses_other_shapes(api: Api) -> None:
    bodies: list[object] = [{}, {"auth_token": None}, {"token": {}}, [], {"auth_token": {}, "x": 1}]
    for body in bodies:
        assert api.post(URL, json=body).status_code == 400, body
    assert api.post(URL, params={"x": "1"}, json={"auth_token": {}}).status_code == 400
