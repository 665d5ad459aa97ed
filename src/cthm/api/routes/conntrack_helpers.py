"""/v2.0/routers/{router_id}/conntrack_helpers: Neutron's conntrack helper API ("bindings").

A binding is always reached through its router: one of another router is not found (404),
whichever router the caller may see (Neutron loaded it by id alone until 2026).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cthm.api import policy
from cthm.api.deps import (
    ContextDep,
    IfMatchDep,
    PrincipalDep,
    QueryDep,
    RepoDep,
    ends_transaction,
)
from cthm.api.principal import Principal
from cthm.api.query import (
    openapi_parameters,
    parse_list_request,
    parse_show_request,
    select_fields,
)
from cthm.api.routes._shared import (
    FORBIDDEN,
    binding_project,
    check_revision,
    list_response,
    load_binding,
    load_router,
    marker_probes,
    no_content,
    respond,
)
from cthm.api.schemas import (
    BINDING_SPEC,
    ConntrackHelperCreateRequest,
    ConntrackHelperListResponse,
    ConntrackHelperResponse,
    ConntrackHelperUpdateRequest,
    binding_body,
)
from cthm.domain import (
    HelperBinding,
    HelperCatalog,
    InvalidInput,
    Protocol,
    Router,
    check_binding_fields,
    new_binding,
    parse_direction,
)
from cthm.settings import Settings

router = APIRouter(prefix="/v2.0/routers/{router_id}/conntrack_helpers", tags=["conntrack helpers"])


def _check_high_risk(
    principal: Principal,
    action: str,
    catalog: HelperCatalog,
    settings: Settings,
    owner: Router,
    *,
    protocol: Protocol,
    helper: str,
    binding_id: str | None,
) -> None:
    """Binding a high-risk helper (creating one, or updating one to one) needs more.
    binding_id: the binding updated (None: one being created)."""
    policy.enforce_helper(
        principal,
        action,
        requested=helper,
        spec=catalog.resolve(helper, protocol),
        project_id=owner.project_id,
        high_risk_projects=settings.high_risk_projects,
        target_type="conntrack_helper",
        target_id=binding_id,
    )


@router.post(
    "",
    status_code=201,
    response_model=ConntrackHelperResponse,
    responses=FORBIDDEN,
)
@ends_transaction(router="router_id")
def create_conntrack_helper(
    router_id: str,
    body: ConntrackHelperCreateRequest,
    repo: RepoDep,
    principal: PrincipalDep,
    context: ContextDep,  # one dependency for the catalog and settings: each costs ~50 us
) -> JSONResponse:
    action = "create_router_conntrack_helper"
    catalog, settings = context.catalog, context.settings
    owner = load_router(repo, principal, router_id, action)
    data = body.conntrack_helper
    for name, value in (("project_id", data.project_id), ("tenant_id", data.tenant_id)):
        if value is not None and value != owner.project_id:
            raise InvalidInput("a conntrack helper belongs to its router's project", field=name)
    wanted = new_binding(
        catalog,
        owner,
        protocol=data.protocol,
        port=data.port,
        helper=data.helper,
        direction=data.direction,
    )
    _check_high_risk(
        principal,
        action,
        catalog,
        settings,
        owner,
        protocol=wanted.protocol,
        helper=wanted.helper,
        binding_id=None,
    )
    # Counted in this request's write transaction: two creates at the limit cannot both pass.
    created = repo.add_binding(
        wanted, quota=settings.binding_quota(owner.project_id), router=owner, last_change=True
    )
    return respond(201, {"conntrack_helper": binding_body(created)})


@router.get(
    "",
    response_model=ConntrackHelperListResponse,
    openapi_extra=openapi_parameters(BINDING_SPEC),
)
def list_conntrack_helpers(
    router_id: str, request: Request, params: QueryDep, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    listing = parse_list_request(params, BINDING_SPEC)
    action = "get_router_conntrack_helper"
    owner = load_router(repo, principal, router_id, action)
    with marker_probes(principal, action, "conntrack_helper", lambda id: binding_project(repo, id)):
        page = listing.page(repo.list_bindings(listing.query, router_id=owner.id))
    return list_response(
        request, "conntrack_helpers", (binding_body(b) for b in page.items), listing, page, _id
    )


@router.get(
    "/{binding_id}",
    response_model=ConntrackHelperResponse,
    openapi_extra=openapi_parameters(BINDING_SPEC, listing=False),
)
def show_conntrack_helper(
    router_id: str, binding_id: str, params: QueryDep, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    fields = parse_show_request(params, BINDING_SPEC)
    _, found = load_binding(repo, principal, router_id, binding_id, "get_router_conntrack_helper")
    return respond(200, {"conntrack_helper": select_fields(binding_body(found), fields)})


@router.put(
    "/{binding_id}",
    response_model=ConntrackHelperResponse,
    responses=FORBIDDEN,
)
@ends_transaction
def update_conntrack_helper(
    router_id: str,
    binding_id: str,
    body: ConntrackHelperUpdateRequest,
    repo: RepoDep,
    principal: PrincipalDep,
    context: ContextDep,
    if_match: IfMatchDep,
) -> JSONResponse:
    action = "update_router_conntrack_helper"
    catalog, settings = context.catalog, context.settings
    owner, current = load_binding(repo, principal, router_id, binding_id, action, lock=True)
    check_revision(if_match, current.revision_number)
    data = body.conntrack_helper
    # The combined result must be a valid binding, not each changed field alone.
    protocol, port, helper = check_binding_fields(
        catalog,
        current.protocol.value if data.protocol is None else data.protocol,
        current.port if data.port is None else data.port,
        current.helper if data.helper is None else data.helper,
    )
    direction = None if data.direction is None else parse_direction(data.direction)
    _check_high_risk(
        principal,
        action,
        catalog,
        settings,
        owner,
        protocol=protocol,
        helper=helper,
        binding_id=current.id,
    )
    updated = repo.update_binding(
        owner.id, current.id, protocol=protocol, port=port, helper=helper, direction=direction
    )
    return respond(200, {"conntrack_helper": binding_body(updated)})


@router.delete("/{binding_id}", status_code=204, responses=FORBIDDEN)
@ends_transaction
def delete_conntrack_helper(
    router_id: str,
    binding_id: str,
    repo: RepoDep,
    principal: PrincipalDep,
    if_match: IfMatchDep,
) -> Response:
    action = "delete_router_conntrack_helper"
    owner, current = load_binding(repo, principal, router_id, binding_id, action, lock=True)
    check_revision(if_match, current.revision_number)
    repo.delete_binding(owner.id, current.id)
    return no_content()


def _id(item: HelperBinding) -> str:
    return item.id
