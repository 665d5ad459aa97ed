"""What a route needs, as named dependencies, so a route's signature declares it.

The principal comes from authentication (cthm.api.auth): `PrincipalDep` is who is calling.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from cthm.api.auth import get_principal
from cthm.api.principal import Principal
from cthm.api.query import Params, reject_query
from cthm.domain import HelperCatalog, InvalidInput, Protocol
from cthm.settings import Settings
from cthm.store import AuditContext, Repository, Store

HelperAvailability = Callable[[], Mapping[tuple[str, Protocol], bool]]

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What create_app was given, kept on the application (never in module globals)."""

    settings: Settings
    store: Store
    catalog: HelperCatalog
    helper_availability: HelperAvailability | None


def get_context(request: Request) -> ApiContext:
    context = request.app.state.cthm
    assert isinstance(context, ApiContext)
    return context


ContextDep = Annotated[ApiContext, Depends(get_context)]


def get_settings(context: ContextDep) -> Settings:
    return context.settings


def get_store(context: ContextDep) -> Store:
    return context.store


def get_catalog(context: ContextDep) -> HelperCatalog:
    return context.catalog


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
CatalogDep = Annotated[HelperCatalog, Depends(get_catalog)]


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_repository(
    request: Request, store: StoreDep, principal: PrincipalDep
) -> Iterator[Repository]:
    """One unit of work per request: committed before the response is sent, rolled back if the
    request fails, so a failed request leaves the database as it was. Changes made through it
    are audited in the same transaction, under the caller's identity."""
    audit = AuditContext(
        request_id=getattr(request.state, "request_id", ""),
        token_id=principal.token_id,
        project_id=principal.project_id,
    )
    with store.unit_of_work(write=request.method not in _READ_METHODS, audit=audit) as repository:
        yield repository


# scope="function": the transaction ends (commit or rollback) before the response goes out, so
# a commit that fails becomes the response instead of being lost after a 2xx was sent.
RepoDep = Annotated[Repository, Depends(get_repository, scope="function")]


def get_query_params(request: Request) -> Params:
    return request.query_params.multi_items()


QueryDep = Annotated[Params, Depends(get_query_params)]


def no_query(params: QueryDep) -> None:
    """For requests that take no query parameters: any is refused."""
    reject_query(params)


def require_json_body(request: Request) -> None:
    """Requests with a body must say it is JSON (Content-Type: application/json)."""
    if request.method not in _BODY_METHODS:
        return
    value = request.headers.get("content-type")
    if not value:
        raise InvalidInput("Content-Type is missing; send the body as application/json")
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (
        subtype == "json" or subtype.endswith("+json")
    ):
        raise InvalidInput("Content-Type must be application/json")


def get_if_match_revision(
    if_match: Annotated[
        str | None,
        Header(
            description="revision_number=N: act only if the object is still at revision N "
            "(Neutron's If-Match); other entries are ignored"
        ),
    ] = None,
) -> int | None:
    if if_match is None:
        return None
    revisions = []
    for entry in if_match.split(","):
        key, sep, value = entry.strip().partition("=")
        if sep and key.strip() == "revision_number":
            text = value.strip()
            if not text.isascii() or not text.isdigit() or len(text) > 18:
                raise InvalidInput("revision_number must be a non-negative integer", "If-Match")
            revisions.append(int(text))
    if len(revisions) > 1:
        raise InvalidInput("give revision_number once", field="If-Match")
    return revisions[0] if revisions else None


IfMatchDep = Annotated[int | None, Depends(get_if_match_revision)]
