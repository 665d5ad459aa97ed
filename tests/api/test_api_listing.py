"""Lists: filters, fields, sorting and Neutron's pagination (limit, marker, page_reverse, links)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from cthm.domain import Status

from .support import JSON, Api, error_of, helpers_url

PORTS = [(p, "tcp", "ftp") for p in (21, 2121, 8021)] + [(p, "udp", "tftp") for p in (69, 6969)]


@pytest.fixture
def bindings(api: Api, router: JSON) -> list[JSON]:
    return [api.create_helper(router["id"], proto, port, helper) for port, proto, helper in PORTS]


def _list(api: Api, url: str, params: Any = None) -> JSON:
    response = api.get(url, params=params)
    assert response.status_code == 200, response.text
    body: JSON = response.json()
    return body


def _ids(items: list[JSON]) -> list[str]:
    return [item["id"] for item in items]


# --- filters -----------------------------------------------------------------------------------


def test_filter_by_one_value_and_by_several(api: Api, router: JSON, bindings: list[JSON]) -> None:
    url = helpers_url(router["id"])
    one = _list(api, url, {"port": "21"})["conntrack_helpers"]
    assert [b["port"] for b in one] == [21]
    several = _list(api, url, [("port", "21"), ("port", "69"), ("port", "1")])["conntrack_helpers"]
    assert sorted(b["port"] for b in several) == [21, 69]


def test_filters_on_different_fields_all_apply(
    api: Api, router: JSON, bindings: list[JSON]
) -> None:
    url = helpers_url(router["id"])
    found = _list(api, url, [("protocol", "udp"), ("port", "21"), ("port", "69")])
    assert [b["port"] for b in found["conntrack_helpers"]] == [69]
    assert _list(api, url, {"protocol": "udp", "helper": "ftp"})["conntrack_helpers"] == []


@pytest.mark.parametrize(
    "field",
    [
        "id",
        "protocol",
        "port",
        "helper",
        "router_id",
        "project_id",
        "status",
        "status_reason",
        "revision_number",
        "created_at",
        "updated_at",
    ],
)
def test_every_binding_field_filters(
    api: Api, router: JSON, bindings: list[JSON], field: str
) -> None:
    with api.store.unit_of_work() as repo:
        assert repo.set_binding_status(
            bindings[1]["id"], Status.ERROR, "helper missing", revision_number=1
        )
    target = api.get(helpers_url(router["id"], bindings[1]["id"])).json()["conntrack_helper"]
    value = target[field]
    text = str(value)
    found = _list(api, helpers_url(router["id"]), {field: text})["conntrack_helpers"]
    assert target["id"] in _ids(found)
    assert all(item[field] == value for item in found)
    if field not in ("router_id", "project_id", "revision_number", "created_at"):
        assert len(found) < len(bindings)


@pytest.mark.parametrize(
    "field",
    [
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
    ],
)
def test_every_router_field_filters(api: Api, field: str) -> None:
    routers = [api.create_router(name=f"r{i}", project_id=f"p{i % 2}") for i in range(3)]
    api.create_helper(routers[0]["id"])  # a different revision_number and updated_at
    with api.store.unit_of_work() as repo:  # as an agent reports it
        assert repo.set_router_status(
            routers[0]["id"], Status.ERROR, "namespace missing", revision_number=2
        )
    target = api.get(f"/v2.0/routers/{routers[0]['id']}").json()["router"]
    found = _list(api, "/v2.0/routers", {field: str(target[field])})["routers"]
    assert target["id"] in _ids(found)
    assert all(item[field] == target[field] for item in found)
    assert len(found) < len(routers)


def test_project_id_and_tenant_id_filters_intersect(api: Api) -> None:
    a = api.create_router(name="a", project_id="pa")
    api.create_router(name="b", project_id="pb")
    both = _list(api, "/v2.0/routers", [("project_id", "pa"), ("tenant_id", "pa")])["routers"]
    assert _ids(both) == [a["id"]]
    none = _list(api, "/v2.0/routers", [("project_id", "pa"), ("tenant_id", "pb")])["routers"]
    assert none == []


def test_router_name_filter_with_hostile_text_is_just_a_value(api: Api) -> None:
    hostile = "x' OR '1'='1"
    api.create_router(name="plain")
    assert _list(api, "/v2.0/routers", {"name": hostile})["routers"] == []
    odd = api.create_router(name=hostile)
    assert _ids(_list(api, "/v2.0/routers", {"name": hostile})["routers"]) == [odd["id"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"port": "abc"}, "port: 'abc' is not an integer"),
        ({"port": "21.0"}, "not an integer"),
        ({"port": "0x15"}, "not an integer"),
        ({"port": "70000"}, "out of range"),
        ({"port": "9" * 40}, "not an integer"),
        ({"revision_number": "one"}, "revision_number: 'one' is not an integer"),
        ({"protocol": "icmp"}, "not a supported protocol"),
        ({"status": "active"}, "is not a status"),
        ({"id": "abc"}, "id: 'abc' is not a valid UUID"),
        ({"router_id": "1 OR 1=1"}, "is not a valid UUID"),
        ({"created_at": "yesterday"}, "is not an ISO 8601 timestamp"),
        ({"project_id": "a b"}, "project_id: must be"),
        ({"helper": "ftp\n"}, "control character"),
        ({"colour": "red"}, "unknown query parameter 'colour'"),
        ({"Port": "21"}, "unknown query parameter 'Port'"),
        ({"x" * 5000: "1"}, "unknown query parameter 'xxxx"),
        ({"fields": "colour"}, "unknown field 'colour'"),
        ({"fields": ""}, "unknown field ''"),
        ({"sort_key": "colour"}, "cannot be sorted on"),
        ({"sort_key": "port", "sort_dir": "up"}, "'up' is not a sort direction"),
        ({"sort_dir": "asc"}, "give one sort_dir per sort_key"),
        ([("sort_key", "port"), ("sort_key", "port")], "more than once"),
        ([("sort_key", "port"), ("sort_key", "id"), ("sort_dir", "asc")], "sort_dir"),
        ({"limit": "-1"}, "limit: must be an integer 0 or greater"),
        ({"limit": "ten"}, "limit: 'ten' is not an integer"),
        ([("limit", "1"), ("limit", "2")], "limit: may be given only once"),
        ({"marker": "abc"}, "marker: 'abc' is not a valid UUID"),
        ({"marker": str(uuid.UUID(int=7))}, "does not match any item"),
        ({"page_reverse": "yes"}, "page_reverse: 'yes' is not a boolean"),
        ({"port": "2" * 2000}, "at most 1024"),
        ([("port", "21")] * 201, "too many query parameters"),
    ],
)
def test_bad_list_query_is_400(
    api: Api, router: JSON, bindings: list[JSON], params: Any, expected: str
) -> None:
    response = api.get(helpers_url(router["id"]), params=params)
    assert response.status_code == 400, response.text
    message = error_of(response)["message"]
    assert expected in message
    assert len(message) <= 1003


def test_conntrack_helpers_is_a_field_but_not_a_filter_or_sort_key(api: Api) -> None:
    api.create_router()
    assert api.get("/v2.0/routers", params={"conntrack_helpers": "x"}).status_code == 400
    assert api.get("/v2.0/routers", params={"sort_key": "conntrack_helpers"}).status_code == 400
    assert api.get("/v2.0/routers", params={"fields": "conntrack_helpers"}).status_code == 200


def test_endpoints_without_query_parameters_refuse_them(api: Api, router: JSON) -> None:
    binding = api.create_helper(router["id"])
    for method, url, body in (
        ("POST", "/v2.0/routers?x=1", {"router": {"name": "n"}}),
        ("PUT", f"/v2.0/routers/{router['id']}?fields=id", {"router": {"name": "n"}}),
        ("DELETE", f"/v2.0/routers/{router['id']}?force=1", None),
        ("DELETE", helpers_url(router["id"], binding["id"]) + "?x=", None),
        ("GET", helpers_url(router["id"], binding["id"]) + "?port=21", None),
        ("GET", f"/v2.0/routers/{router['id']}?limit=1", None),
        ("GET", "/v2.0/conntrack_helper_catalog?helper=ftp", None),
    ):
        before = api.snapshot()
        response = api.request(method, url, json=body)
        assert response.status_code == 400, (method, url, response.text)
        assert "unknown query parameter" in error_of(response)["message"]
        assert api.snapshot() == before


# --- fields ------------------------------------------------------------------------------------


def test_fields_selects_what_is_returned(api: Api, router: JSON, bindings: list[JSON]) -> None:
    url = helpers_url(router["id"])
    listed = _list(api, url, [("fields", "port"), ("fields", "id"), ("fields", "port")])
    assert listed["conntrack_helpers"]
    assert all(set(item) == {"id", "port"} for item in listed["conntrack_helpers"])
    shown = api.get(helpers_url(router["id"], bindings[0]["id"]), params={"fields": "helper"})
    assert shown.json() == {"conntrack_helper": {"helper": "ftp"}}
    routers = _list(api, "/v2.0/routers", [("fields", "tenant_id"), ("fields", "name")])
    assert routers["routers"] == [{"name": router["name"], "tenant_id": router["project_id"]}]
    one = api.get(f"/v2.0/routers/{router['id']}", params={"fields": "conntrack_helpers"})
    assert [h["id"] for h in one.json()["router"]["conntrack_helpers"]] != []


# --- sorting -----------------------------------------------------------------------------------


def test_sort_by_one_and_by_several_keys(api: Api, router: JSON, bindings: list[JSON]) -> None:
    url = helpers_url(router["id"])
    by_port = _list(api, url, {"sort_key": "port", "sort_dir": "desc"})["conntrack_helpers"]
    assert [b["port"] for b in by_port] == sorted((p for p, _, _ in PORTS), reverse=True)
    params = [("sort_key", "protocol"), ("sort_dir", "desc"), ("sort_key", "port")]
    params.append(("sort_dir", "asc"))
    mixed = _list(api, url, params)["conntrack_helpers"]
    assert [(b["protocol"], b["port"]) for b in mixed] == [
        ("udp", 69),
        ("udp", 6969),
        ("tcp", 21),
        ("tcp", 2121),
        ("tcp", 8021),
    ]
    ascending = _list(api, url, {"sort_key": "port"})["conntrack_helpers"]
    assert [b["port"] for b in ascending] == sorted(p for p, _, _ in PORTS)


# --- pagination --------------------------------------------------------------------------------


def _links(body: JSON, collection: str) -> dict[str, str]:
    return {link["rel"]: link["href"] for link in body.get(f"{collection}_links", [])}


def _follow(api: Api, href: str) -> JSON:
    parts = urlsplit(href)
    assert parts.netloc == "testserver"
    return _list(api, parts.path, parse_qsl(parts.query, keep_blank_values=True))


def test_no_links_without_more_items(api: Api, router: JSON, bindings: list[JSON]) -> None:
    body = _list(api, helpers_url(router["id"]))
    assert "conntrack_helpers_links" not in body
    body = _list(api, helpers_url(router["id"]), {"limit": "5"})
    assert "conntrack_helpers_links" not in body
    body = _list(api, helpers_url(router["id"]), {"limit": "0"})  # 0: the default page
    assert len(body["conntrack_helpers"]) == 5
    assert "conntrack_helpers_links" not in body


@pytest.mark.parametrize(
    "sort",
    [
        [],
        [("sort_key", "port"), ("sort_dir", "desc")],
        [("sort_key", "helper"), ("sort_dir", "asc"), ("sort_key", "port"), ("sort_dir", "desc")],
        [("sort_key", "status")],  # all equal: only the id tiebreaker orders them
    ],
)
def test_walk_forward_and_back_through_pages(
    api: Api, router: JSON, bindings: list[JSON], sort: list[tuple[str, str]]
) -> None:
    url = helpers_url(router["id"])
    everything = _ids(_list(api, url, sort)["conntrack_helpers"])
    assert len(everything) == 5

    pages: list[list[str]] = []
    body = _list(api, url, [*sort, ("limit", "2")])
    while True:
        pages.append(_ids(body["conntrack_helpers"]))
        links = _links(body, "conntrack_helpers")
        assert ("previous" in links) == (len(pages) > 1)
        if "next" not in links:
            break
        assert len(pages) < 10
        body = _follow(api, links["next"])
    assert pages == [everything[0:2], everything[2:4], everything[4:5]]

    # And back again from the last page, following "previous".
    back = [pages[-1]]
    while "previous" in _links(body, "conntrack_helpers"):
        body = _follow(api, _links(body, "conntrack_helpers")["previous"])
        back.append(_ids(body["conntrack_helpers"]))
        assert len(back) < 10
        links = _links(body, "conntrack_helpers")
        assert "next" in links
    assert back == [everything[4:5], everything[2:4], everything[0:2]]


def test_page_reverse_returns_the_items_before_the_marker_in_order(
    api: Api, router: JSON, bindings: list[JSON]
) -> None:
    url = helpers_url(router["id"])
    everything = _ids(_list(api, url, {"sort_key": "port"})["conntrack_helpers"])
    params = {"sort_key": "port", "limit": "2", "marker": everything[4], "page_reverse": "true"}
    body = _list(api, url, params)
    assert _ids(body["conntrack_helpers"]) == everything[2:4]
    links = _links(body, "conntrack_helpers")
    assert set(links) == {"next", "previous"}
    assert dict(parse_qsl(urlsplit(links["next"]).query))["marker"] == everything[3]
    assert dict(parse_qsl(urlsplit(links["previous"]).query))["marker"] == everything[2]
    # Without a marker, page_reverse gives the last page.
    last = _list(api, url, {"sort_key": "port", "limit": "2", "page_reverse": "True"})
    assert _ids(last["conntrack_helpers"]) == everything[3:5]
    assert set(_links(last, "conntrack_helpers")) == {"previous"}


def test_links_keep_the_filters_and_sort(api: Api, router: JSON, bindings: list[JSON]) -> None:
    url = helpers_url(router["id"])
    params = [("protocol", "tcp"), ("sort_key", "port"), ("sort_dir", "desc"), ("limit", "1")]
    body = _list(api, url, params)
    assert [b["port"] for b in body["conntrack_helpers"]] == [8021]
    next_href = _links(body, "conntrack_helpers")["next"]
    query = parse_qsl(urlsplit(next_href).query)
    assert ("protocol", "tcp") in query
    assert ("sort_dir", "desc") in query
    assert [b["port"] for b in _follow(api, next_href)["conntrack_helpers"]] == [2121]


def test_marker_after_the_last_item_gives_an_empty_page(
    api: Api, router: JSON, bindings: list[JSON]
) -> None:
    url = helpers_url(router["id"])
    everything = _ids(_list(api, url)["conntrack_helpers"])
    body = _list(api, url, {"limit": "2", "marker": everything[-1]})
    assert body["conntrack_helpers"] == []
    assert set(_links(body, "conntrack_helpers")) == {"previous"}
    previous = _follow(api, _links(body, "conntrack_helpers")["previous"])
    assert _ids(previous["conntrack_helpers"]) == everything[-2:]


def test_router_list_pages_and_shows_bindings(api: Api) -> None:
    routers = [api.create_router(name=f"r{i}") for i in range(5)]
    for r in routers:
        api.create_helper(r["id"], "tcp", 21, "ftp")
    seen: list[JSON] = []
    body = _list(api, "/v2.0/routers", {"limit": "2", "sort_key": "name"})
    for _ in range(5):
        seen += body["routers"]
        links = _links(body, "routers")
        if "next" not in links:
            break
        body = _follow(api, links["next"])
    assert [r["name"] for r in seen] == [f"r{i}" for i in range(5)]
    assert all(len(r["conntrack_helpers"]) == 1 for r in seen)


def test_a_timestamp_filter_out_of_range_is_a_400_not_a_500(api: Api, router: JSON) -> None:
    for value in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = api.get("/v2.0/routers", params={"created_at": value})
        assert response.status_code == 400, response.text
        assert "out of the representable range" in response.json()["NeutronError"]["message"]
