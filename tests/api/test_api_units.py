"""The pure parts of the API: error mapping and messages, query parsing, pagination links,
and the agreement between response models and the filterable fields."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from cthm.api.errors import (
    MESSAGE_MAX,
    Forbidden,
    RequestTooLarge,
    body_parse_message,
    clean_message,
    error_body,
    shown,
    status_of,
    validation_message,
)
from cthm.api.query import (
    ListRequest,
    Page,
    pagination_links,
    parse_list_request,
    parse_show_request,
    reject_query,
)
from cthm.api.schemas import (
    BINDING_SPEC,
    ROUTER_SPEC,
    ConntrackHelperPublic,
    RouterPublic,
    format_timestamp,
)
from cthm.domain import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    BindingConflict,
    BindingNotFound,
    CthmError,
    InvalidInput,
    ListQuery,
    NamespaceInUse,
    PreconditionFailed,
    Protocol,
    RouterNotFound,
    SortDir,
    Status,
    Unavailable,
)
from cthm.store import BINDING_FIELDS, ROUTER_FIELDS

# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidInput("x"), 400),
        (Forbidden("get_router"), 403),
        (RouterNotFound(str(uuid.uuid4())), 404),
        (BindingNotFound(str(uuid.uuid4())), 404),
        (BindingConflict("r", "tcp", 21, "b"), 409),
        (NamespaceInUse("ns", "r"), 409),
        (PreconditionFailed("x"), 412),
        (RequestTooLarge(10), 413),
        (Unavailable("x"), 503),
        (CthmError("bare base class"), 500),
    ],
)
def test_status_of_domain_errors(error: CthmError, status: int) -> None:
    assert status_of(error) == status


def test_error_body_is_neutrons_and_bounded() -> None:
    body = error_body("InvalidInput", "line one\nline two\x00" + "x" * 5000)
    error = body["NeutronError"]
    assert set(error) == {"type", "message", "detail"}
    assert error["detail"] == ""
    assert error["message"].isprintable()
    assert len(error["message"]) <= MESSAGE_MAX + 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "'abc'"),
        ("a\nb", "'a\\nb'"),
        ("\ud800", "'\\ud800'"),
        ("x" * 100, "'" + "x" * 40 + "'..."),
        (12, "12"),
    ],
)
def test_shown_escapes_and_caps(value: object, expected: str) -> None:
    assert shown(value) == expected


def test_clean_message_replaces_control_characters() -> None:
    assert clean_message("a\r\nb\tc") == "a  b c"


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (
            [{"type": "int_type", "loc": ("body", "conntrack_helper", "port"), "input": "21"}],
            "Invalid input for conntrack_helper.port: must be an integer, not a string",
        ),
        (
            [{"type": "int_type", "loc": ("body", "x", "port"), "input": True}],
            "Invalid input for x.port: must be an integer, not a boolean",
        ),
        (
            [{"type": "extra_forbidden", "loc": ("body", "router", "a\nb"), "input": 1}],
            "Invalid input for router: unknown field 'a\\nb'",
        ),
        (
            [{"type": "extra_forbidden", "loc": ("body", "x" * 100), "input": 1}],
            "unknown field '" + "x" * 40 + "'...",
        ),
        (
            [{"type": "missing", "loc": ("body", "router", "name"), "input": {}}],
            "Invalid input for router.name: field is required",
        ),
        (
            [{"type": "missing", "loc": ("body",), "input": None}],
            "Request body is required: a JSON object",
        ),
        (
            [{"type": "model_attributes_type", "loc": ("body",), "input": b"x"}],
            "Request body must be JSON sent with Content-Type: application/json",
        ),
        (
            [{"type": "model_attributes_type", "loc": ("body",), "input": [1]}],
            "Request body must be a JSON object, not an array",
        ),
        (
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", 7),
                    "input": {},
                    "ctx": {"error": "Expecting value"},
                }
            ],
            "Malformed JSON in the request body: Expecting value at position 7",
        ),
        (
            [{"type": "string_type", "loc": ("body", "\u00e9\u00e9", 3), "input": None}],
            "Invalid input for '\u00e9\u00e9'[3]: must be a string, not null",
        ),
    ],
)
def test_validation_messages(errors: list[dict[str, Any]], expected: str) -> None:
    assert validation_message(errors) == expected


def test_validation_message_shows_at_most_three_errors() -> None:
    errors = [{"type": "missing", "loc": ("body", f"f{i}"), "input": {}} for i in range(5)]
    message = validation_message(errors)
    assert message.count("field is required") == 3
    assert message.endswith("(and 2 more errors)")


def test_body_parse_messages() -> None:
    assert "UTF-8" in body_parse_message(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"))
    assert "nested" in body_parse_message(RecursionError())
    assert "number" in body_parse_message(ValueError("Exceeds the limit"))
    assert "could not be parsed" in body_parse_message(None)


# --- query parsing ---------------------------------------------------------------------------


def test_empty_query_is_the_default_page() -> None:
    parsed = parse_list_request([], BINDING_SPEC)
    assert parsed.query == ListQuery(limit=DEFAULT_PAGE_LIMIT + 1)
    assert parsed.limit == DEFAULT_PAGE_LIMIT
    assert parsed.fields == ()
    assert parsed.marker is None
    assert parsed.page_reverse is False


def test_full_query_is_typed_for_the_store() -> None:
    marker = str(uuid.uuid4())
    params = [
        ("port", "21"),
        ("port", "69"),
        ("port", "21"),
        ("protocol", "tcp"),
        ("status", "ERROR"),
        ("created_at", "2024-05-01T12:00:00+02:00"),
        ("updated_at", "2024-05-01T12:00:00"),
        ("fields", "id"),
        ("sort_key", "port"),
        ("sort_dir", "desc"),
        ("sort_key", "helper"),
        ("sort_dir", "asc"),
        ("limit", "20"),
        ("marker", marker.upper()),
        ("page_reverse", "True"),
    ]
    parsed = parse_list_request(params, BINDING_SPEC)
    assert parsed.query.filters == {
        "port": (21, 69),
        "protocol": (Protocol.TCP,),
        "status": (Status.ERROR,),
        "created_at": (datetime(2024, 5, 1, 10, 0, tzinfo=UTC),),
        "updated_at": (datetime(2024, 5, 1, 12, 0, tzinfo=UTC),),
    }
    assert parsed.query.sort == (("port", SortDir.DESC), ("helper", SortDir.ASC))
    assert parsed.query.limit == 21  # one more than a page: is there another page?
    assert parsed.query.marker == marker
    assert parsed.query.page_reverse is True
    assert parsed.fields == ("id",)


def test_tenant_id_filters_the_project_id_column() -> None:
    parsed = parse_list_request([("tenant_id", "p1")], ROUTER_SPEC)
    assert parsed.query.filters == {"project_id": ("p1",)}
    both = parse_list_request([("tenant_id", "p1"), ("project_id", "p2")], ROUTER_SPEC)
    assert both.query.filters == {"project_id": ()}


@pytest.mark.parametrize(
    ("given", "limit"), [("0", DEFAULT_PAGE_LIMIT), ("7", 7), ("99999999", MAX_PAGE_LIMIT)]
)
def test_limit(given: str, limit: int) -> None:
    assert parse_list_request([("limit", given)], ROUTER_SPEC).limit == limit


def test_narrowing_to_a_project() -> None:
    parsed = parse_list_request([("project_id", "a"), ("project_id", "b")], ROUTER_SPEC)
    assert parsed.narrowed_to(None) is parsed
    # A scope, not a filter: the store bounds the marker by it too (issue 10, item 1).
    narrowed = parsed.narrowed_to("b").query
    assert narrowed.scope == {"project_id": ("b",)}
    assert narrowed.filters == {"project_id": ("a", "b")}
    unfiltered = parse_list_request([], ROUTER_SPEC).narrowed_to("c")
    assert unfiltered.query.scope == {"project_id": ("c",)}
    assert unfiltered.query.filters == {}


def test_show_and_write_queries() -> None:
    assert parse_show_request([("fields", "name")], ROUTER_SPEC) == ("name",)
    with pytest.raises(InvalidInput, match="unknown query parameter 'limit'"):
        parse_show_request([("limit", "1")], ROUTER_SPEC)
    reject_query([])
    with pytest.raises(InvalidInput, match="accepted here: none"):
        reject_query([("x", "1")])


def _request(params: list[tuple[str, str]], **kwargs: Any) -> ListRequest:
    parsed = parse_list_request(params, BINDING_SPEC)
    return parsed if not kwargs else ListRequest(**{**parsed.__dict__, **kwargs})


def test_page_trims_and_turns_a_reversed_page_back() -> None:
    forward = parse_list_request([("limit", "2")], BINDING_SPEC)
    assert forward.page([1, 2, 3]) == Page([1, 2], has_more=True)
    assert forward.page([1, 2]) == Page([1, 2], has_more=False)
    backward = parse_list_request([("limit", "2"), ("page_reverse", "true")], BINDING_SPEC)
    # The store walks back from the marker, nearest first; the page reads forwards again.
    assert backward.page([5, 4, 3]) == Page([4, 5], has_more=True)


def test_pagination_links() -> None:
    url = "http://h/v2.0/routers"
    first = parse_list_request([("limit", "2"), ("port", "21")], BINDING_SPEC)
    links = pagination_links(url, first, Page(["a", "b"], has_more=True), str)
    assert links == [{"rel": "next", "href": f"{url}?limit=2&port=21&marker=b"}]
    assert pagination_links(url, first, Page(["a"], has_more=False), str) == []

    marker = str(uuid.uuid4())
    middle = parse_list_request([("limit", "2"), ("marker", marker)], BINDING_SPEC)
    links = pagination_links(url, middle, Page(["c", "d"], has_more=True), str)
    assert links == [
        {"rel": "next", "href": f"{url}?limit=2&marker=d"},
        {"rel": "previous", "href": f"{url}?limit=2&marker=c&page_reverse=True"},
    ]
    back = [("limit", "2"), ("marker", marker), ("page_reverse", "true")]
    reverse = parse_list_request(back, BINDING_SPEC)
    links = pagination_links(url, reverse, Page(["c", "d"], has_more=False), str)
    assert links == [{"rel": "next", "href": f"{url}?limit=2&marker=d"}]
    empty = pagination_links(url, middle, Page([], has_more=False), str)
    assert empty == [{"rel": "previous", "href": f"{url}?limit=2&page_reverse=True"}]


# --- schemas ---------------------------------------------------------------------------------


def test_response_models_and_query_specs_name_the_same_fields() -> None:
    assert list(RouterPublic.model_fields) == list(ROUTER_SPEC.fields)
    assert list(ConntrackHelperPublic.model_fields) == list(BINDING_SPEC.fields)


def test_every_filterable_field_is_a_store_field() -> None:
    # Filters on every stored field, and only on those (the store refuses others).
    router_columns = {f.column for f in ROUTER_SPEC.fields.values() if f.column}
    binding_columns = {f.column for f in BINDING_SPEC.fields.values() if f.column}
    assert router_columns == set(ROUTER_FIELDS)
    assert binding_columns == set(BINDING_FIELDS)


def test_timestamps_are_utc_with_z() -> None:
    local = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(local) == "2024-05-01T12:00:00.123456Z"
    assert format_timestamp(datetime(2024, 5, 1, tzinfo=UTC)) == "2024-05-01T00:00:00Z"
    assert format_timestamp(None) is None
