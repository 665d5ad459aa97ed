"""Authentication through the ASGI app on a real store: which requests need a token, the two
ways to send one, and the one answer every failure gets, whatever its cause."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import Request

from cthm.api.auth import Authenticator, FailureThrottle, get_principal
from cthm.api.errors import Unauthenticated

from .support import Api, ApiFactory, error_of

EXEMPT = ("/", "/v2.0", "/v2.0/", "/healthz")
# Every kind of thing that exists behind authentication: routes, the OpenAPI document, paths
# and methods that do not exist (an unauthenticated caller must not learn which do).
PROTECTED = (
    ("GET", "/v2.0/routers"),
    ("POST", "/v2.0/routers"),
    ("GET", f"/v2.0/routers/{uuid.uuid4()}/conntrack_helpers"),
    ("GET", "/v2.0/conntrack_helper_catalog"),
    ("GET", "/v2.0/auth_tokens"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/nowhere"),
    ("POST", "/healthz"),
    ("DELETE", "/v2.0"),
    ("PATCH", "/v2.0/routers"),
)
WELL_FORMED_UNKNOWN = "cthm_" + "A" * 43


def unauthorized(response: object) -> tuple[int, bytes, str | None, str]:
    """What a 401 looks like from outside: status, body, challenge, error type."""
    assert hasattr(response, "status_code")
    status, body = response.status_code, response.content  # type: ignore[attr-defined]
    challenge = response.headers.get("WWW-Authenticate")  # type: ignore[attr-defined]
    return status, body, challenge, error_of(response)["type"]  # type: ignore[arg-type]


def test_exempt_endpoints_answer_without_a_token(api: Api) -> None:
    anonymous = api.as_token(None)
    for path in EXEMPT:
        assert anonymous.get(path).status_code == 200, path


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_everything_else_needs_a_token(api: Api, method: str, path: str) -> None:
    body = {"router": {"name": "x"}} if method in ("POST", "PATCH") else None
    response = api.as_token(None).request(method, path, json=body)
    assert response.status_code == 401, response.text
    error = error_of(response)
    assert error == {
        "type": "HTTPUnauthorized",
        "message": "Authentication required",
        "detail": "",
    }
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["X-Openstack-Request-Id"].startswith("req-")
    assert api.snapshot().routers == []  # nothing happened


def test_with_a_token_the_same_requests_get_their_real_answers(api: Api) -> None:
    assert api.get("/openapi.json").status_code == 200
    assert api.get("/v2.0/conntrack_helper_catalog").status_code == 200
    for path in ("/docs", "/redoc", "/nowhere"):
        assert api.get(path).status_code == 404, path
    assert api.request("DELETE", "/v2.0").status_code == 405


def test_the_openapi_document_declares_how_to_send_a_token(api: Api) -> None:
    document = api.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["token"] == {"type": "apiKey", "in": "header", "name": "X-Auth-Token"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["security"] == [{"token": []}, {"bearer": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in document["paths"]["/v2.0/routers"]["get"]
    assert "401" in document["paths"]["/v2.0/routers"]["get"]["responses"]


def test_x_auth_token_and_bearer_both_work(api: Api) -> None:
    secret = api.issue_token("p1", ["reader"])
    anonymous = api.as_token(None)
    for headers in (
        {"X-Auth-Token": secret},
        {"x-auth-token": f"  {secret} "},
        {"Authorization": f"Bearer {secret}"},
        {"Authorization": f"bearer {secret}"},
        {"X-Auth-Token": secret, "Authorization": f"Bearer {secret}"},  # the same one twice
    ):
        response = anonymous.get("/v2.0/routers", headers=headers)
        assert response.status_code == 200, headers


def test_every_failure_gets_the_same_answer(api: Api) -> None:
    """Missing, malformed, unknown, expired and revoked tokens cannot be told apart."""
    expired = api.issue_token("p1", ["admin"], expires_at=datetime.now(UTC) - timedelta(seconds=1))
    revoked = api.issue_token("p1", ["admin"])
    revoke_by_secret(api, revoked)
    valid = api.issue_token("p1", ["admin"])
    anonymous = api.as_token(None)
    causes = {
        "missing": {},
        "empty": {"X-Auth-Token": ""},
        "unknown": {"X-Auth-Token": WELL_FORMED_UNKNOWN},
        "wrong by one character": {"X-Auth-Token": valid[:-1] + ("A" if valid[-1] != "A" else "B")},
        "too short": {"X-Auth-Token": valid[:-1]},
        "too long": {"X-Auth-Token": valid + "A"},
        "not a cthm token": {"X-Auth-Token": "gAAAAABk-some-keystone-token"},
        "expired": {"X-Auth-Token": expired},
        "revoked": {"X-Auth-Token": revoked},
        "basic auth": {"Authorization": "Basic YWRtaW46YWRtaW4="},
        "bearer without token": {"Authorization": "Bearer"},
        "bearer with two words": {"Authorization": f"Bearer {valid} x"},
        "two different tokens": {"X-Auth-Token": valid, "Authorization": f"Bearer {expired}"},
        "secret as the scheme": {"Authorization": valid},
    }
    answers = {}
    for cause, headers in causes.items():
        response = anonymous.get("/v2.0/routers", headers=headers)
        answers[cause] = unauthorized(response)
        for secret in (valid, expired, revoked):
            assert secret[:16] not in response.text
    assert set(answers.values()) == {
        (
            401,
            b'{"NeutronError":{"type":"HTTPUnauthorized","message":"Authentication required",'
            b'"detail":""}}',
            "Bearer",
            "HTTPUnauthorized",
        )
    }, answers
    assert anonymous.get("/v2.0/routers", headers={"X-Auth-Token": valid}).status_code == 200


def test_two_x_auth_token_headers_with_different_values_are_refused(api: Api) -> None:
    valid = api.issue_token("p1", ["admin"])
    response = api.as_token(None).get(
        "/v2.0/routers", headers=[("X-Auth-Token", valid), ("X-Auth-Token", WELL_FORMED_UNKNOWN)]
    )
    assert response.status_code == 401


def revoke_by_secret(api: Api, secret: str) -> None:
    with api.store.unit_of_work() as repo:
        token = repo.tokens.lookup(secret)
        assert token is not None
        repo.tokens.revoke(token.id, datetime.now(UTC))


def test_a_token_expires_at_its_time(api_factory: ApiFactory) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    authenticator = Authenticator(
        FailureThrottle(base_delay=0.001, max_delay=0.001), clock=lambda: now[0]
    )
    api = api_factory(authenticator=authenticator)
    secret = api.issue_token("p1", ["reader"], expires_at=now[0] + timedelta(hours=1))
    user = api.as_token(secret)
    assert user.get("/v2.0/routers").status_code == 200
    now[0] += timedelta(minutes=59, seconds=59)
    assert user.get("/v2.0/routers").status_code == 200
    now[0] += timedelta(seconds=1)  # exactly at expires_at: no longer
    assert user.get("/v2.0/routers").status_code == 401


def test_a_revoked_token_stops_working_at_once(api: Api) -> None:
    secret = api.issue_token("p1", ["member"])
    user = api.as_token(secret)
    assert user.get("/v2.0/routers").status_code == 200
    revoke_by_secret(api, secret)
    assert user.get("/v2.0/routers").status_code == 401


def test_a_route_reached_without_the_middleware_refuses() -> None:
    """get_principal only reads what the middleware decided; with nothing decided: 401."""
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "state": {}})
    with pytest.raises(Unauthenticated):
        get_principal(request)
