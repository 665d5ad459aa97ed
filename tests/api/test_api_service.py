"""Version documents, the catalog, health, OpenAPI and the request id on every response."""

from __future__ import annotations

import re
from pathlib import Path

from cthm.domain import KERNEL_HELPERS, Protocol
from cthm.store import Store

from .support import Api, ApiFactory, error_of, make_settings

CATALOG_KEYS = {
    "helper",
    "protocol",
    "kernel_helper",
    "module",
    "default_port",
    "ipv6",
    "high_risk",
    "description",
    "kernel_available",
}


def test_version_document_at_root(api: Api) -> None:
    response = api.get("/")
    assert response.status_code == 200
    assert response.json() == {
        "versions": [
            {
                "id": "v2.0",
                "status": "CURRENT",
                "links": [{"href": "http://testserver/v2.0/", "rel": "self"}],
            }
        ]
    }


def test_resources_document_with_and_without_slash(api: Api) -> None:
    for path in ("/v2.0", "/v2.0/"):
        response = api.get(path)
        assert response.status_code == 200
        resources = {r["name"]: r for r in response.json()["resources"]}
        assert resources["router"] == {
            "name": "router",
            "collection": "routers",
            "links": [{"href": "http://testserver/v2.0/routers", "rel": "self"}],
        }
        for resource in resources.values():
            href = resource["links"][0]["href"]
            assert api.get(href.removeprefix("http://testserver")).status_code == 200


def test_catalog_lists_every_kernel_helper_and_the_h323_alias(api: Api) -> None:
    response = api.get("/v2.0/conntrack_helper_catalog")
    assert response.status_code == 200
    entries = response.json()["conntrack_helper_catalog"]
    assert all(set(e) == CATALOG_KEYS for e in entries)
    pairs = {(e["helper"], e["protocol"]) for e in entries}
    expected = {(s.name, p.value) for s in KERNEL_HELPERS for p in s.protocols}
    expected |= {("h323", "udp"), ("h323", "tcp")}
    assert pairs == expected
    assert ("amanda", "tcp") not in pairs
    ftp = next(e for e in entries if e["helper"] == "ftp")
    assert ftp == {
        "helper": "ftp",
        "protocol": "tcp",
        "kernel_helper": "ftp",
        "module": "nf_conntrack_ftp",
        "default_port": 21,
        "ipv6": True,
        "high_risk": False,
        "description": ftp["description"],
        "kernel_available": None,  # no probe given: unknown
    }
    irc = next(e for e in entries if e["helper"] == "irc")
    assert irc["ipv6"] is False
    assert irc["high_risk"] is True


def test_catalog_shows_what_the_kernel_has(api_factory: ApiFactory) -> None:
    def availability() -> dict[tuple[str, Protocol], bool]:
        return {("ftp", Protocol.TCP): True, ("RAS", Protocol.UDP): False}

    api = api_factory(helper_availability=availability)
    entries = api.get("/v2.0/conntrack_helper_catalog").json()["conntrack_helper_catalog"]
    available = {(e["helper"], e["protocol"]): e["kernel_available"] for e in entries}
    assert available[("ftp", "tcp")] is True
    assert available[("RAS", "udp")] is False
    assert available[("h323", "udp")] is False  # the alias reports its kernel helper
    assert available[("tftp", "udp")] is None  # not probed


def test_catalog_survives_a_failing_probe(api_factory: ApiFactory) -> None:
    def broken() -> dict[tuple[str, Protocol], bool]:
        raise OSError("no /proc here")

    api = api_factory(helper_availability=broken)
    response = api.get("/v2.0/conntrack_helper_catalog")
    assert response.status_code == 200
    assert {e["kernel_available"] for e in response.json()["conntrack_helper_catalog"]} == {None}


def test_health_ok(api: Api) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unusable_database_is_503_not_500(api_factory: ApiFactory, tmp_path: Path) -> None:
    # A database file in a directory that does not exist: every connection fails.
    settings = make_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/missing/dir/cthm.db")
    no_database = api_factory(
        settings=settings, store=Store(settings.effective_database_url), admin=False
    )
    # A well-formed token: checking it needs the database, which cannot say yes or no.
    api = no_database.as_token("cthm_" + "A" * 43)
    api.allow_status(503)
    for method, url, body in (
        ("GET", "/healthz", None),
        ("GET", "/v2.0/routers", None),
        ("POST", "/v2.0/routers", {"router": {"name": "x"}}),
    ):
        response = api.request(method, url, json=body)
        assert response.status_code == 503, (url, response.text)
        error = error_of(response)
        assert error["type"] == "ServiceUnavailable"
        assert "database" in error["message"]
        assert "Traceback" not in response.text
    for path in ("/", "/v2.0"):  # version discovery needs neither a token nor the database
        assert api.get(path).status_code == 200


def test_openapi_document(api: Api) -> None:
    response = api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    for path in (
        "/",
        "/v2.0",
        "/v2.0/routers",
        "/v2.0/routers/{router_id}",
        "/v2.0/routers/{router_id}/conntrack_helpers",
        "/v2.0/routers/{router_id}/conntrack_helpers/{binding_id}",
        "/v2.0/conntrack_helper_catalog",
        "/healthz",
    ):
        assert path in paths, path
    listing = {
        p["name"] for p in paths["/v2.0/routers/{router_id}/conntrack_helpers"]["get"]["parameters"]
    }
    assert {"port", "protocol", "fields", "sort_key", "limit", "marker"} <= listing
    for operations in paths.values():  # request errors are 400s here, never FastAPI's 422
        for operation in operations.values():
            assert "422" not in operation["responses"]
    schemas = document["components"]["schemas"]
    assert set(re.findall(r"#/components/schemas/(\w+)", response.text)) <= set(schemas)
    create = schemas["ConntrackHelperCreate"]
    assert create["additionalProperties"] is False


def test_every_response_carries_a_request_id(api: Api) -> None:
    router = api.create_router()
    seen = set()
    for method, url, kwargs in (
        ("GET", "/", {}),
        ("GET", "/v2.0/routers", {}),
        ("POST", "/v2.0/routers", {"json": {"router": {"name": "x"}}}),
        ("DELETE", f"/v2.0/routers/{router['id']}", {}),
        ("GET", "/v2.0/routers?port=1", {}),
        ("GET", "/nowhere", {}),
        ("PATCH", "/v2.0/routers", {"json": {}}),
        ("POST", "/v2.0/routers", {"content": b"x" * 70_000}),
    ):
        response = api.request(method, url, **kwargs)
        request_id = response.headers.get("X-Openstack-Request-Id", "")
        assert request_id.startswith("req-"), (method, url, response.status_code)
        assert len(request_id) == len("req-") + 36
        seen.add(request_id)
    assert len(seen) == 8  # one per request
