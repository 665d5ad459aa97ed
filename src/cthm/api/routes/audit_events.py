"""/v2.0/audit_events: the audit trail (admins only): every change and every denied attempt.

Filters as on every list (repeat a parameter for any of several values), plus a time window:
`since` (inclusive) and `until` (exclusive), ISO 8601. Sorted by time, oldest first, unless
sort_key says otherwise; paged with limit/marker as Neutron's lists.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api import policy
from cthm.api.deps import PrincipalDep, QueryDep, RepoDep, StoreDep
from cthm.api.query import (
    FieldSpec,
    Params,
    ResourceSpec,
    openapi_parameters,
    parse_int,
    parse_list_request,
    parse_project_id,
    parse_text,
    parse_timestamp,
    parse_uuid,
)
from cthm.api.routes._shared import FORBIDDEN, list_response
from cthm.api.schemas import Link
from cthm.domain import InvalidInput, SortDir
from cthm.store.audit import Outcome

router = APIRouter(prefix="/v2.0", tags=["audit"])

WINDOW = ("since", "until")
FLUSH_TIMEOUT = 5.0


def _parse_outcome(text: str, name: str) -> str:
    try:
        return Outcome(text).value
    except ValueError:
        allowed = ", ".join(o.value for o in Outcome)
        raise InvalidInput(f"must be one of {allowed}", field=name) from None


def _parse_time(text: str, name: str) -> datetime:
    try:
        return parse_timestamp(text, name)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable UTC time
        raise InvalidInput("is out of range", field=name) from None


AUDIT_EVENT_SPEC = ResourceSpec(
    collection="audit_events",
    fields={
        "id": FieldSpec("id", parse_uuid),
        "time": FieldSpec("time", _parse_time),
        "request_id": FieldSpec("request_id", parse_text),
        "token_id": FieldSpec("token_id", parse_text),
        "project_id": FieldSpec("project_id", parse_project_id),
        "action": FieldSpec("action", parse_text),
        "target_type": FieldSpec("target_type", parse_text),
        "target_id": FieldSpec("target_id", parse_text),
        "target_project_id": FieldSpec("target_project_id", parse_project_id),
        "outcome": FieldSpec("outcome", _parse_outcome),
        "status_code": FieldSpec("status_code", parse_int),
        "before": FieldSpec(),
        "after": FieldSpec(),
        "detail": FieldSpec(),
    },
)


class AuditEventPublic(BaseModel):
    id: str
    time: str = Field(description="ISO 8601, UTC")
    request_id: str = Field(description="the X-Openstack-Request-Id of the request")
    token_id: str | None = Field(description="the caller's token id (never the token)")
    project_id: str | None = Field(description="the caller's project")
    action: str
    target_type: str
    target_id: str | None
    target_project_id: str | None
    outcome: Outcome
    status_code: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    detail: str


class AuditEventListResponse(BaseModel):
    audit_events: list[AuditEventPublic]
    audit_events_links: list[Link] | None = Field(default=None, description="only when paginated")


def _window(params: Params) -> tuple[dict[str, datetime], Params]:
    bounds: dict[str, datetime] = {}
    rest = []
    for key, value in params:
        if key not in WINDOW:
            rest.append((key, value))
            continue
        if key in bounds:
            raise InvalidInput("may be given only once", field=key)
        bounds[key] = _parse_time(value, key)
    return bounds, rest


def _openapi() -> dict[str, Any]:
    extra = openapi_parameters(AUDIT_EVENT_SPEC)
    for name, description in (
        ("since", "only events at or after this time (ISO 8601)"),
        ("until", "only events before this time (ISO 8601)"),
    ):
        extra["parameters"].append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": {"type": "string", "format": "date-time"},
            }
        )
    return extra


@router.get(
    "/audit_events",
    response_model=AuditEventListResponse,
    responses=FORBIDDEN,
    openapi_extra=_openapi(),
)
def list_audit_events(
    request: Request, params: QueryDep, repo: RepoDep, principal: PrincipalDep, store: StoreDep
) -> JSONResponse:
    policy.enforce(principal, "get_audit_events", None, target_type="audit_events")
    # Denied attempts are committed in the background: wait (bounded) for those already made,
    # so the trail read here holds every earlier one. Before the first query, which is what
    # opens this request's read transaction.
    store.flush_denied(FLUSH_TIMEOUT)
    bounds, rest = _window(params)
    listing = parse_list_request(rest, AUDIT_EVENT_SPEC)
    if not listing.query.sort:  # oldest first; ties in the same microsecond by id
        listing = replace(listing, query=replace(listing.query, sort=(("time", SortDir.ASC),)))
    # The page links keep the window.
    listing = replace(listing, params=tuple(params))
    page = listing.page(
        repo.audit.list(listing.query, since=bounds.get("since"), until=bounds.get("until"))
    )
    return list_response(
        request, "audit_events", (event for event in page.items), listing, page, _id
    )


def _id(event: dict[str, Any]) -> str:
    return str(event["id"])
