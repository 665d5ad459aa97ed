"""The query string of list and show requests, parsed into a domain ListQuery.

Neutron's parameters: filters on fields (repeat a parameter for OR: `?port=21&port=69`),
`fields` (repeatable), `sort_key`/`sort_dir` (repeatable, paired by position), `limit`, `marker`,
`page_reverse`. Anything else, or a value of the wrong type, is refused with a 400 naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

from cthm.api.errors import shown
from cthm.domain import (
    DEFAULT_PAGE_LIMIT,
    MAX_PAGE_LIMIT,
    InvalidInput,
    ListQuery,
    SortDir,
    Status,
    parse_direction,
    parse_protocol,
    validate_name,
    validate_namespace,
    validate_port,
    validate_project_id,
    validate_uuid,
)

# Bounds on what one query string may ask for: every value becomes an SQL parameter.
MAX_PARAMETERS = 200
MAX_VALUE_LENGTH = 1024

PAGING = ("limit", "marker", "page_reverse")
SORTING = ("sort_key", "sort_dir")
FIELDS = "fields"

Params = Sequence[tuple[str, str]]
Parser = Callable[[str, str], object]
T = TypeVar("T")


# --- value parsers: (text, parameter name) -> value typed as the store's column --------------

_INTEGER = re.compile(r"-?[0-9]{1,18}")


def parse_int(text: str, name: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise InvalidInput(f"{shown(text)} is not an integer", field=name)
    return int(text)


def parse_port(text: str, name: str) -> int:
    return validate_port(parse_int(text, name), field=name)


def parse_uuid(text: str, name: str) -> str:
    return validate_uuid(text, name)


def parse_name(text: str, name: str) -> str:
    return validate_name(text, name)


def parse_project_id(text: str, name: str) -> str:
    return validate_project_id(text, name)


def parse_namespace(text: str, name: str) -> str:
    return validate_namespace(text, name)


def parse_text(text: str, name: str) -> str:
    """Free text (a helper name, a status reason): any printable text."""
    if not text.isprintable():
        raise InvalidInput("contains a control character", field=name)
    return text


def parse_status(text: str, name: str) -> Status:
    try:
        return Status(text)
    except ValueError:
        allowed = ", ".join(s.value for s in Status)
        raise InvalidInput(f"{shown(text)} is not a status ({allowed})", field=name) from None


def parse_protocol_value(text: str, name: str) -> object:
    return parse_protocol(text, field=name)


def parse_direction_value(text: str, name: str) -> object:
    return parse_direction(text, field=name)


def parse_timestamp(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{shown(text)} is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)", field=name
        ) from None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC equivalent
        raise InvalidInput(f"{shown(text)} is out of the representable range", field=name) from None


def parse_bool(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise InvalidInput(f"{shown(text)} is not a boolean (true or false)", field=name)
    return lowered == "true"


# --- what a resource offers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a public body. column None: shown, but neither filterable nor sortable."""

    column: str | None = None
    parse: Parser | None = None


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    collection: str
    fields: Mapping[str, FieldSpec]

    def column(self, name: str) -> str | None:
        spec = self.fields.get(name)
        return spec.column if spec else None

    def filterable(self) -> list[str]:
        return [n for n, f in self.fields.items() if f.column is not None and f.parse is not None]


# --- parsed requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


@dataclass(frozen=True, slots=True)
class ListRequest:
    """A parsed list request. `query` goes to the store and asks for one item more than a
    page, to learn whether another page follows."""

    query: ListQuery
    fields: tuple[str, ...] = ()
    limit: int = DEFAULT_PAGE_LIMIT
    marker: str | None = None
    page_reverse: bool = False
    params: tuple[tuple[str, str], ...] = field(default=())

    def wants(self, name: str) -> bool:
        return not self.fields or name in self.fields

    def page(self, items: list[T]) -> Page[T]:
        """The page from what the store returned (limit + 1 items at most).

        With page_reverse the store walks backwards from the marker, nearest first; the page
        is turned back into the requested order, as Neutron returns it.
        """
        page = items[: self.limit]
        if self.page_reverse:
            page.reverse()
        return Page(page, has_more=len(items) > self.limit)

    def narrowed_to(self, project_id: str | None) -> ListRequest:
        """The same request seeing only `project_id` (None: unchanged). A scope, not a filter:
        the marker is looked up only inside it."""
        if project_id is None:
            return self
        scope = {**self.query.scope, "project_id": (project_id,)}
        return replace(self, query=replace(self.query, scope=scope))


def _singular(params: Params, name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise InvalidInput("may be given only once", field=name)
    return values[0] if values else None


def _check_size(params: Params) -> None:
    if len(params) > MAX_PARAMETERS:
        raise InvalidInput(f"too many query parameters ({len(params)}; at most {MAX_PARAMETERS})")
    for key, value in params:
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidInput(
                f"value is {len(value)} characters long; at most {MAX_VALUE_LENGTH}",
                field=_key(key),
            )


def _key(name: str) -> str:
    return name if name.isidentifier() and len(name) <= 40 else shown(name)


def parse_fields(params: Params, spec: ResourceSpec) -> tuple[str, ...]:
    wanted: list[str] = []
    for key, value in params:
        if key != FIELDS:
            continue
        if value not in spec.fields:
            known = ", ".join(spec.fields)
            raise InvalidInput(f"unknown field {shown(value)}; known: {known}", field=FIELDS)
        if value not in wanted:
            wanted.append(value)
    return tuple(wanted)


def parse_show_request(params: Params, spec: ResourceSpec) -> tuple[str, ...]:
    """A show request takes only `fields`."""
    _check_size(params)
    _reject_unknown(params, {FIELDS})
    return parse_fields(params, spec)


def reject_query(params: Params) -> None:
    """Requests that take no query parameters refuse any."""
    _check_size(params)
    _reject_unknown(params, set())


def _reject_unknown(params: Params, known: set[str]) -> None:
    for key, _ in params:
        if key not in known:
            accepted = ", ".join(sorted(known)) or "none"
            raise InvalidInput(f"unknown query parameter {shown(key)} (accepted here: {accepted})")


def parse_list_request(params: Params, spec: ResourceSpec) -> ListRequest:
    _check_size(params)
    known = {*spec.fields, FIELDS, *SORTING, *PAGING}
    _reject_unknown(params, known)
    filters = _parse_filters(params, spec)
    limit = _parse_limit(_singular(params, "limit"))
    marker_text = _singular(params, "marker")
    marker = None if marker_text is None else validate_uuid(marker_text, "marker")
    reverse_text = _singular(params, "page_reverse")
    page_reverse = False if reverse_text is None else parse_bool(reverse_text, "page_reverse")
    query = ListQuery(
        filters=filters,
        sort=_parse_sort(params, spec),
        limit=limit + 1,
        marker=marker,
        page_reverse=page_reverse,
    )
    return ListRequest(
        query=query,
        fields=parse_fields(params, spec),
        limit=limit,
        marker=marker,
        page_reverse=page_reverse,
        params=tuple(params),
    )


def _parse_filters(params: Params, spec: ResourceSpec) -> dict[str, tuple[object, ...]]:
    by_name: dict[str, list[object]] = {}
    for key, value in params:
        if key in (FIELDS, *SORTING, *PAGING):
            continue
        field_spec = spec.fields[key]
        if field_spec.column is None or field_spec.parse is None:
            raise InvalidInput(f"{key} cannot be used as a filter")
        values = by_name.setdefault(key, [])
        parsed = field_spec.parse(value, key)
        if parsed not in values:
            values.append(parsed)
    filters: dict[str, tuple[object, ...]] = {}
    for name, values in by_name.items():
        column = spec.fields[name].column
        assert column is not None
        # Two names of one column (tenant_id, project_id) filter together: both must match.
        previous = filters.get(column)
        kept = values if previous is None else [v for v in previous if v in values]
        filters[column] = tuple(kept)
    return filters


def _parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_PAGE_LIMIT
    value = parse_int(text, "limit")
    if value < 0:
        raise InvalidInput(f"must be an integer 0 or greater, not {value}", field="limit")
    # As Neutron with a page size limit: 0 means "the default page", more than the most is capped.
    return min(value, MAX_PAGE_LIMIT) or DEFAULT_PAGE_LIMIT


def _parse_sort(params: Params, spec: ResourceSpec) -> tuple[tuple[str, SortDir], ...]:
    keys = [v for k, v in params if k == "sort_key"]
    dirs = [v for k, v in params if k == "sort_dir"]
    if dirs and len(dirs) != len(keys):
        raise InvalidInput(
            f"{len(keys)} sort_key and {len(dirs)} sort_dir given; give one sort_dir per "
            "sort_key, or none (ascending)",
            field="sort_dir",
        )
    sort: list[tuple[str, SortDir]] = []
    for index, key in enumerate(keys):
        column = spec.column(key)
        if column is None:
            sortable = ", ".join(n for n, f in spec.fields.items() if f.column is not None)
            raise InvalidInput(
                f"{shown(key)} cannot be sorted on; sortable: {sortable}", field="sort_key"
            )
        if any(c == column for c, _ in sort):
            raise InvalidInput(f"{key} is given more than once", field="sort_key")
        direction = dirs[index] if dirs else SortDir.ASC.value
        try:
            sort.append((column, SortDir(direction)))
        except ValueError:
            raise InvalidInput(
                f"{shown(direction)} is not a sort direction (asc or desc)", field="sort_dir"
            ) from None
    return tuple(sort)


def select_fields(body: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    wanted = tuple(fields)
    return {k: v for k, v in body.items() if k in wanted} if wanted else body


def pagination_links(
    url: str, request: ListRequest, page: Page[Any], id_of: Callable[[Any], str]
) -> list[dict[str, str]]:
    """Neutron's `<collection>_links`: next when more items follow, previous when some precede."""
    if request.page_reverse:
        ahead, behind = request.marker is not None, page.has_more
    else:
        ahead, behind = page.has_more, request.marker is not None
    kept = [(k, v) for k, v in request.params if k not in ("marker", "page_reverse")]
    links = []
    if ahead:
        marker = [("marker", id_of(page.items[-1]))] if page.items else []
        links.append({"rel": "next", "href": f"{url}?{urlencode([*kept, *marker])}"})
    if behind:
        marker = [("marker", id_of(page.items[0]))] if page.items else []
        previous = [*kept, *marker, ("page_reverse", "True")]
        links.append({"rel": "previous", "href": f"{url}?{urlencode(previous)}"})
    return links


def openapi_parameters(spec: ResourceSpec, *, listing: bool = True) -> dict[str, Any]:
    """The query parameters above, for the OpenAPI document (they are parsed here, by hand)."""

    def param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    many = {"type": "array", "items": {"type": "string"}}
    parameters = [param(FIELDS, f"fields to return (repeatable): {', '.join(spec.fields)}", many)]
    if not listing:
        return {"parameters": parameters}
    parameters += [
        param(name, "filter (repeat for any of several values)", many) for name in spec.filterable()
    ]
    parameters += [
        param("sort_key", "sort on this field (repeatable)", many),
        param("sort_dir", "asc or desc, one per sort_key", many),
        param("limit", f"page size (default {DEFAULT_PAGE_LIMIT})", {"type": "integer"}),
        param("marker", "id of the last item of the previous page", {"type": "string"}),
        param("page_reverse", "page backwards from the marker", {"type": "boolean"}),
    ]
    return {"parameters": parameters}
