"""/v2.0/auth_tokens: API tokens, managed by admins.

A token's secret is returned once, as `token` in the answer to its creation, and never again:
the store keeps only its hash, and no body shows that either. DELETE revokes (the record stays,
with `revoked_at`, so the audit trail's token ids keep meaning something); it is refused (409
LastAdminToken) when it would end admin access sooner, unless `?force=true`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api import policy
from cthm.api.deps import PrincipalDep, QueryDep, RepoDep, no_query
from cthm.api.errors import shown
from cthm.api.query import (
    FieldSpec,
    ResourceSpec,
    openapi_parameters,
    parse_bool,
    parse_list_request,
    parse_name,
    parse_project_id,
    parse_show_request,
    parse_timestamp,
    parse_uuid,
    reject_query,
    select_fields,
)
from cthm.api.routes._shared import list_response, no_content, path_id, respond
from cthm.api.schemas import Link, StrictModel, Timestamp
from cthm.domain import AuthToken, InvalidInput, Role, TokenNotFound, parse_roles
from cthm.domain.placement import validate_host

router = APIRouter(prefix="/v2.0/auth_tokens", tags=["auth tokens"])

TARGET_TYPE = "auth_token"
MAX_ROLES = 16  # there are four roles; a longer list is not a mistake worth parsing


# --- bodies ------------------------------------------------------------------------------------


class AuthTokenCreate(StrictModel):
    READ_ONLY = frozenset({"id", "token", "created_at", "revoked_at", "created_by"})

    project_id: str
    roles: list[str] = Field(
        max_length=MAX_ROLES, description=f"one or more of {', '.join(r.value for r in Role)}"
    )
    expires_at: str | None = Field(
        default=None,
        description="ISO 8601 with a timezone, in the future (e.g. 2030-01-01T00:00:00Z); "
        "null: never expires",
    )
    description: str = ""
    host: str | None = Field(
        default=None,
        description="an agent token (roles [agent]) limited to this host: it may register, "
        "read and report for that host only; null: any host",
    )


class AuthTokenCreateRequest(StrictModel):
    auth_token: AuthTokenCreate


class AuthTokenPublic(BaseModel):
    id: str
    project_id: str
    roles: list[Role]
    description: str
    created_at: Timestamp
    expires_at: Timestamp
    revoked_at: Timestamp
    created_by: str | None = Field(description="id of the token that created this one")
    host: str | None = Field(description="the one host this agent token acts for; null: any")


class AuthTokenCreated(AuthTokenPublic):
    token: str = Field(description="the secret: shown in this answer only, never again")


class AuthTokenResponse(BaseModel):
    auth_token: AuthTokenPublic


class AuthTokenCreatedResponse(BaseModel):
    auth_token: AuthTokenCreated


class AuthTokenListResponse(BaseModel):
    auth_tokens: list[AuthTokenPublic]
    auth_tokens_links: list[Link] | None = Field(default=None, description="only when paginated")


AUTH_TOKEN_SPEC = ResourceSpec(
    collection="auth_tokens",
    fields={
        "id": FieldSpec("id", parse_uuid),
        "project_id": FieldSpec("project_id", parse_project_id),
        "roles": FieldSpec(),
        "description": FieldSpec("description", parse_name),
        "created_at": FieldSpec("created_at", parse_timestamp),
        "expires_at": FieldSpec("expires_at", parse_timestamp),
        "revoked_at": FieldSpec("revoked_at", parse_timestamp),
        "created_by": FieldSpec("created_by", parse_uuid),
        "host": FieldSpec(),
    },
)


def token_body(token: AuthToken) -> dict[str, Any]:
    """A token as every body shows it: never its secret, never its hash."""
    return AuthTokenPublic(
        id=token.id,
        project_id=token.project_id,
        roles=sorted(token.roles),
        description=token.description,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        created_by=token.created_by,
        host=token.host,
    ).model_dump(mode="json")


def parse_expiry(value: str, now: datetime, field: str = "auth_token.expires_at") -> datetime:
    """An ISO 8601 time with a timezone, later than `now`."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{shown(value)} is not an ISO 8601 time (e.g. 2030-01-01T00:00:00Z)", field=field
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInput("must include a timezone (e.g. 2030-01-01T00:00:00Z)", field=field)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInput("is out of range", field=field) from None
    if parsed <= now:
        raise InvalidInput("must be in the future", field=field)
    return parsed


def _agent_host(value: str, roles: frozenset[Role]) -> str:
    """A host limit, for an agent-only token: on any other role it would limit nothing."""
    if roles != {Role.AGENT}:
        raise InvalidInput(
            'only an agent token (roles ["agent"]) may be limited to a host',
            field="auth_token.host",
        )
    return validate_host(value, "auth_token.host")


def _token_id(value: str) -> str:
    return path_id(value, TokenNotFound)


# --- routes ------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=AuthTokenCreatedResponse,
    dependencies=[Depends(no_query)],
)
def create_auth_token(
    body: AuthTokenCreateRequest, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    data = body.auth_token
    project_id = parse_project_id(data.project_id, "auth_token.project_id")
    policy.enforce(principal, "create_auth_token", project_id, target_type=TARGET_TYPE)
    roles = parse_roles(data.roles, "auth_token.roles")
    host = None if data.host is None else _agent_host(data.host, roles)
    now = datetime.now(UTC)
    expires_at = None if data.expires_at is None else parse_expiry(data.expires_at, now)
    token, secret = repo.tokens.create(
        project_id=project_id,
        roles=roles,
        expires_at=expires_at,
        description=parse_name(data.description, "auth_token.description"),
        created_by=principal.token_id,
        host=host,
    )
    public = token_body(token)
    repo.audit.record(
        action="create_auth_token",
        target_type=TARGET_TYPE,
        target_id=token.id,
        target_project_id=token.project_id,
        before=None,
        after=public,
        status_code=201,
    )
    return respond(201, {"auth_token": {**public, "token": secret}})


@router.get(
    "", response_model=AuthTokenListResponse, openapi_extra=openapi_parameters(AUTH_TOKEN_SPEC)
)
def list_auth_tokens(
    request: Request, params: QueryDep, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    policy.enforce(principal, "get_auth_token", None, target_type=TARGET_TYPE)
    listing = parse_list_request(params, AUTH_TOKEN_SPEC)
    page = listing.page(repo.tokens.list(listing.query))
    return list_response(
        request, "auth_tokens", (token_body(t) for t in page.items), listing, page, _id
    )


@router.get(
    "/{token_id}",
    response_model=AuthTokenResponse,
    openapi_extra=openapi_parameters(AUTH_TOKEN_SPEC, listing=False),
)
def show_auth_token(
    token_id: str, params: QueryDep, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    # Enforced before the lookup: a non-admin learns nothing about which ids exist.
    policy.enforce(principal, "get_auth_token", None, target_type=TARGET_TYPE, target_id=token_id)
    fields = parse_show_request(params, AUTH_TOKEN_SPEC)
    found = repo.tokens.get(_token_id(token_id))
    return respond(200, {"auth_token": select_fields(token_body(found), fields)})


FORCE_PARAMETER = {
    "name": "force",
    "in": "query",
    "required": False,
    "description": "true: revoke even the last active admin token (or the one admin access "
    "lasts longest by), which is otherwise a 409 LastAdminToken",
    "schema": {"type": "boolean", "default": False},
}


def parse_force(params: QueryDep) -> bool:
    """`?force=true|false`, the only query parameter a revocation takes."""
    reject_query([(key, value) for key, value in params if key != "force"])
    values = [value for key, value in params if key == "force"]
    if len(values) > 1:
        raise InvalidInput("may be given only once", field="force")
    return bool(values) and parse_bool(values[0], "force")


@router.delete("/{token_id}", status_code=204, openapi_extra={"parameters": [FORCE_PARAMETER]})
def revoke_auth_token(
    token_id: str,
    repo: RepoDep,
    principal: PrincipalDep,
    force: Annotated[bool, Depends(parse_force)],
) -> Response:
    policy.enforce(
        principal, "delete_auth_token", None, target_type=TARGET_TYPE, target_id=token_id
    )
    before = repo.tokens.get(_token_id(token_id))
    if before.revoked_at is None:
        # Refused (409 LastAdminToken) when it would end admin access sooner, unless forced;
        # checked and done in this request's one write transaction.
        after = repo.tokens.revoke(before.id, datetime.now(UTC), force=force)
        repo.audit.record(
            action="delete_auth_token",
            target_type=TARGET_TYPE,
            target_id=after.id,
            target_project_id=after.project_id,
            before=token_body(before),
            after=token_body(after),
            status_code=204,
            detail="forced" if force else "",
        )
    return no_content()


def _id(item: AuthToken) -> str:
    return item.id
