"""Errors of the request itself: bodies, content types, sizes, unknown routes, methods; the
last-resort 500; a failed request changes nothing; and no input at all produces a 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cthm.api.deps import RepoDep
from cthm.domain import InvalidInput, new_router

from .support import JSON, Api, ApiFactory, error_of, helpers_url

JSON_TYPE = {"Content-Type": "application/json"}


def _raw(api: Api, method: str, url: str, content: bytes, headers: dict[str, str]) -> Any:
    return api.request(method, url, content=content, headers=headers)


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b'{"router": {"name": "x"}', JSON_TYPE, "Malformed JSON in the request body"),
        (b"{'router': {}}", JSON_TYPE, "Malformed JSON"),
        (b'{"router": {"name": "\xff\xfe"}}', JSON_TYPE, "not valid UTF-8"),
        (b"[" * 20_000 + b"]" * 20_000, JSON_TYPE, "nested too deeply"),
        (b'{"router": {"name": ' + b"9" * 5000 + b"}}", JSON_TYPE, "number is too long"),
        (b"", JSON_TYPE, "Request body is required"),
        (b"null", JSON_TYPE, "must be a JSON object, not null"),
        (b"[]", JSON_TYPE, "must be a JSON object, not an array"),
        (b'"router"', JSON_TYPE, "must be a JSON object, not a string"),
        (b"12", JSON_TYPE, "must be a JSON object, not an integer"),
        (b'{"router": {"name": "x"}}', {}, "Content-Type is missing"),
        (b'{"router": {"name": "x"}}', {"Content-Type": "text/plain"}, "must be application/json"),
        (
            b"router[name]=x",
            {"Content-Type": "application/x-www-form-urlencoded"},
            "must be application/json",
        ),
        (b'{"router": {"name": "x"}}', {"Content-Type": "multipart/form-data"}, "application/json"),
        (b'{"router": {"name": "x"}}', {"Content-Type": "json"}, "must be application/json"),
        (b'{"router": {"name": "x"}}', {"Content-Type": "\x00"}, "must be application/json"),
    ],
)
def test_bad_request_body_is_400(
    api: Api, content: bytes, headers: dict[str, str], expected: str
) -> None:
    response = _raw(api, "POST", "/v2.0/routers", content, headers)
    assert response.status_code == 400, response.text
    assert expected in error_of(response)["message"]
    assert api.snapshot().routers == []


def test_json_content_type_with_parameters_is_accepted(api: Api) -> None:
    body = json.dumps({"router": {"name": "x"}}).encode()
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert _raw(api, "POST", "/v2.0/routers", body, headers).status_code == 201


def test_body_over_the_limit_is_413(api: Api, router: JSON) -> None:
    big = json.dumps({"router": {"name": "x" * 100_000}}).encode()
    response = _raw(api, "PUT", f"/v2.0/routers/{router['id']}", big, JSON_TYPE)
    assert response.status_code == 413
    assert error_of(response)["type"] == "RequestEntityTooLarge"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"router": {"name": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}}'

    streamed = api.put(f"/v2.0/routers/{router['id']}", content=chunks(), headers=JSON_TYPE)
    assert streamed.status_code == 413
    error_of(streamed)
    assert api.get(f"/v2.0/routers/{router['id']}").json()["router"]["name"] == router["name"]


def test_unknown_route_is_a_neutron_404(api: Api) -> None:
    for path in ("/v2.0/networks", "/v2.1/routers", "/v2.0/routers/x/y/z/w", "/%00", "/\u2603"):
        response = api.get(path)
        assert response.status_code == 404, path
        error = error_of(response)
        assert error["type"] == "HTTPNotFound"
        assert error["message"] == "The resource could not be found."


def test_wrong_method_is_a_neutron_405(api: Api, router: JSON) -> None:
    for method, path in (
        ("PATCH", "/v2.0/routers"),
        ("PUT", "/v2.0/routers"),
        ("DELETE", "/v2.0/routers"),
        ("POST", f"/v2.0/routers/{router['id']}"),
        ("PATCH", helpers_url(router["id"])),
        ("POST", "/v2.0/conntrack_helper_catalog"),
        ("DELETE", "/"),
    ):
        response = api.request(method, path, json={})
        assert response.status_code == 405, (method, path)
        assert error_of(response)["type"] == "HTTPMethodNotAllowed"
        assert response.headers.get("Allow")


def _add_exploding_route(app: FastAPI) -> None:
    @app.get("/test-explode")
    def explode() -> None:
        raise RuntimeError("secret internal detail /etc/cthm/password")


def test_unexpected_exception_is_a_generic_500_without_traceback(
    api_factory: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = api_factory(app_hook=_add_exploding_route)
    api.allow_status(500)  # this test provokes one on purpose, through a test-only route
    with caplog.at_level(logging.ERROR, logger="cthm.api"):
        response = api.get("/test-explode")
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "HTTPInternalServerError"
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["X-Openstack-Request-Id"].startswith("req-")
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "secret internal detail" in logged  # the operator sees it; the client does not
    assert response.headers["X-Openstack-Request-Id"] in logged


def _add_write_then_fail_route(app: FastAPI) -> None:
    @app.post("/test-write-then-fail")
    def write_then_fail(repo: RepoDep) -> None:
        repo.add_router(new_router(name="half", project_id="p1"))
        raise InvalidInput("refused after writing")


def test_a_request_failing_after_a_write_leaves_the_database_unchanged(
    api_factory: ApiFactory,
) -> None:
    api = api_factory(app_hook=_add_write_then_fail_route)
    api.create_router(name="before")
    before = api.snapshot()
    response = api.post("/test-write-then-fail", json={})
    assert response.status_code == 400
    assert error_of(response)["message"] == "refused after writing"
    assert api.snapshot() == before


def test_failed_requests_leave_the_database_unchanged(api: Api) -> None:
    router = api.create_router(name="edge", namespace="ns-edge")
    other = api.create_router(name="other")
    ftp = api.create_helper(router["id"], "tcp", 21, "ftp")
    api.create_helper(router["id"], "udp", 69, "tftp")
    foreign = api.create_helper(other["id"], "tcp", 21, "ftp")
    before = api.snapshot()
    failures = [
        ("POST", "/v2.0/routers", {"router": {"name": "x", "namespace": "ns-edge"}}, 409),
        ("POST", "/v2.0/routers", {"router": {"name": "x\n"}}, 400),
        ("PUT", f"/v2.0/routers/{router['id']}", {"router": {"namespace": "y"}}, 400),
        ("PUT", f"/v2.0/routers/{router['id']}", {"router": {"name": "n" * 300}}, 400),
        (
            "POST",
            helpers_url(router["id"]),
            {"conntrack_helper": {**_ftp(), "helper": "tftp"}},
            400,
        ),
        ("POST", helpers_url(router["id"]), {"conntrack_helper": _ftp()}, 409),
        ("PUT", helpers_url(router["id"], ftp["id"]), {"conntrack_helper": {"port": 0}}, 400),
        (
            "PUT",
            helpers_url(router["id"], ftp["id"]),
            {"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}},
            409,
        ),
        ("PUT", helpers_url(router["id"], foreign["id"]), {"conntrack_helper": {"port": 1}}, 404),
        ("DELETE", helpers_url(router["id"], foreign["id"]), None, 404),
        ("DELETE", helpers_url(other["id"], ftp["id"]), None, 404),
    ]
    for method, url, body, status in failures:
        response = api.request(method, url, json=body)
        assert response.status_code == status, (method, url, response.text)
        error_of(response)
        assert api.snapshot() == before, (method, url)
    stale = api.delete(f"/v2.0/routers/{router['id']}", headers={"If-Match": "revision_number=1"})
    assert stale.status_code == 412
    assert api.snapshot() == before


def _ftp() -> dict[str, Any]:
    return {"protocol": "tcp", "port": 21, "helper": "ftp"}


# --- no input produces a 500 ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["tcp", "udp", "ftp", "h323", "tftp", "sip", "RAS", "amanda"]),
    st.integers(min_value=-5, max_value=70000),
)
binding_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "conntrack_helper": st.one_of(
                json_values,
                st.dictionaries(
                    st.sampled_from(["protocol", "port", "helper", "id", "project_id", "x"]),
                    field_values,
                    max_size=4,
                ),
            )
        },
    ),
)
router_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "router": st.dictionaries(
                st.sampled_from(["name", "project_id", "tenant_id", "namespace", "id", "x"]),
                json_values,
                max_size=4,
            )
        },
    ),
)
QUERY_NAMES = ["port", "protocol", "id", "fields", "sort_key", "sort_dir", "limit", "marker"]
QUERY_NAMES += ["page_reverse", "created_at", "status", "name", "x", "tenant_id"]
query_strings = st.lists(
    st.tuples(
        st.sampled_from(QUERY_NAMES),
        st.text(max_size=20),
    ),
    max_size=5,
)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=binding_bodies, update=binding_bodies)
def test_no_binding_body_produces_a_server_error(
    api: Api, router: JSON, body: Any, update: Any
) -> None:
    created = _raw(api, "POST", helpers_url(router["id"]), json.dumps(body).encode(), JSON_TYPE)
    assert created.status_code in (201, 400, 409), created.text
    if created.status_code == 201:
        binding_id = created.json()["conntrack_helper"]["id"]
        url = helpers_url(router["id"], binding_id)
        updated = _raw(api, "PUT", url, json.dumps(update).encode(), JSON_TYPE)
        assert updated.status_code in (200, 400, 409), updated.text
        assert api.delete(url).status_code == 204
    else:
        error_of(created)


@FUZZ
@given(body=router_bodies)
def test_no_router_body_produces_a_server_error(api: Api, router: JSON, body: Any) -> None:
    created = _raw(api, "POST", "/v2.0/routers", json.dumps(body).encode(), JSON_TYPE)
    assert created.status_code in (201, 400, 409), created.text
    updated = _raw(
        api, "PUT", f"/v2.0/routers/{router['id']}", json.dumps(body).encode(), JSON_TYPE
    )
    assert updated.status_code in (200, 400), updated.text
    if created.status_code == 201:
        assert api.delete(f"/v2.0/routers/{created.json()['router']['id']}").status_code == 204


@FUZZ
@given(params=query_strings, raw=st.binary(max_size=40))
def test_no_query_string_produces_a_server_error(
    api: Api, router: JSON, params: list[tuple[str, str]], raw: bytes
) -> None:
    for url in ("/v2.0/routers", helpers_url(router["id"])):
        response = api.get(url, params=params)
        assert response.status_code in (200, 400), response.text
        undecodable = api.get(url + "?" + quote(raw, safe="=&"))  # any bytes, even not UTF-8
        assert undecodable.status_code in (200, 400), undecodable.text


@FUZZ
@given(body=st.binary(max_size=200), content_type=st.text(max_size=30))
def test_no_raw_body_produces_a_server_error(
    api: Api, router: JSON, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type.encode("ascii", "ignore").decode().strip()}
    response = _raw(api, "POST", helpers_url(router["id"]), body, headers)
    assert response.status_code in (201, 400, 409), response.text
