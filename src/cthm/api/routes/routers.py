"""/v2.0/routers: create, list, show, update (name only), delete."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from cthm.api import policy
from cthm.api.deps import (
    IfMatchDep,
    PrincipalDep,
    QueryDep,
    RepoDep,
    ends_transaction,
)
from cthm.api.query import (
    openapi_parameters,
    parse_list_request,
    parse_show_request,
    select_fields,
)
from cthm.api.routes._shared import (
    FORBIDDEN,
    check_revision,
    list_response,
    load_router,
    marker_probes,
    no_content,
    respond,
)
from cthm.api.schemas import (
    ROUTER_SPEC,
    RouterCreateRequest,
    RouterListResponse,
    RouterResponse,
    RouterUpdateRequest,
    router_body,
)
from cthm.domain import (
    InvalidInput,
    ListQuery,
    NamespaceCheck,
    Router,
    RouterNotFound,
    new_router,
    validate_name,
    validate_project_id,
    validate_uuid,
)
from cthm.store import Repository

router = APIRouter(prefix="/v2.0/routers", tags=["routers"])


def _project_of(project_id: str | None, tenant_id: str | None, default: str) -> str:
    # A value given is checked as given: "" is a wrong project, not "the caller's project".
    for name, value in (("project_id", project_id), ("tenant_id", tenant_id)):
        if value is not None:
            validate_project_id(value, name)
    if project_id is not None and tenant_id is not None and project_id != tenant_id:
        raise InvalidInput("project_id and tenant_id differ; give one of them")
    return project_id or tenant_id or default


@router.post(
    "",
    status_code=201,
    response_model=RouterResponse,
    responses=FORBIDDEN,
)
@ends_transaction
def create_router(
    body: RouterCreateRequest, request: Request, repo: RepoDep, principal: PrincipalDep
) -> Response:
    data = body.router
    project_id = _project_of(data.project_id, data.tenant_id, principal.project_id)
    router_id = None
    if data.id is not None:
        # Checked first: a non-admin learns that the id is the refused part.
        policy.enforce(
            principal,
            "create_router:id",
            project_id,
            target_type="router",
            message="only an admin may choose a router's id (rule:create_router:id)",
        )
        router_id = validate_uuid(data.id, "id")
    policy.enforce(principal, "create_router", project_id, target_type="router")
    wanted = new_router(
        name=data.name, project_id=project_id, namespace=data.namespace, router_id=router_id
    )
    _refuse_unusable_namespace(request, repo, wanted)
    created = repo.add_router(wanted)
    hosts = placement(request, repo, [created.id])
    return respond(201, {"router": router_body(created, [], hosts.get(created.id, ()))})


def _refuse_unusable_namespace(request: Request, repo: Repository, wanted: Router) -> None:
    """409 when the namespace already exists on the agent's host and that agent would refuse
    it (domain.NamespaceCheck, given by `cthm serve` when its agent runs in-process). Without
    a check the agent alone decides, when it applies the router."""
    check: NamespaceCheck | None = getattr(request.app.state, "namespace_check", None)
    if check is not None:
        check(wanted.namespace, lambda: repo.list_routers(ListQuery()))


@router.get("", response_model=RouterListResponse, openapi_extra=openapi_parameters(ROUTER_SPEC))
def list_routers(
    request: Request, params: QueryDep, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    scope = policy.list_scope(principal)
    policy.enforce(principal, "get_router", scope, target_type="router")
    listing = parse_list_request(params, ROUTER_SPEC).narrowed_to(scope)
    with marker_probes(principal, "get_router", "router", lambda id: _router_project(repo, id)):
        page = listing.page(repo.list_routers(listing.query))
    bindings = (
        repo.bindings_of(r.id for r in page.items) if listing.wants("conntrack_helpers") else {}
    )
    # One query for the page, never one per router.
    hosts = placement(request, repo, [r.id for r in page.items]) if listing.wants("hosts") else {}
    return list_response(
        request,
        "routers",
        (router_body(r, bindings.get(r.id, []), hosts.get(r.id, ())) for r in page.items),
        listing,
        page,
        _id,
    )


@router.get(
    "/{router_id}",
    response_model=RouterResponse,
    openapi_extra=openapi_parameters(ROUTER_SPEC, listing=False),
)
def show_router(
    router_id: str, request: Request, params: QueryDep, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    fields = parse_show_request(params, ROUTER_SPEC)
    found = load_router(repo, principal, router_id, "get_router")
    body = _with_bindings(request, repo, found)
    return respond(200, {"router": select_fields(body, fields)})


@router.put(
    "/{router_id}",
    response_model=RouterResponse,
    responses=FORBIDDEN,
)
@ends_transaction
def update_router(
    router_id: str,
    request: Request,
    body: RouterUpdateRequest,
    repo: RepoDep,
    principal: PrincipalDep,
    if_match: IfMatchDep,
) -> JSONResponse:
    found = load_router(repo, principal, router_id, "update_router", lock=True)
    check_revision(if_match, found.revision_number)
    if body.router.name is not None:
        found = repo.update_router(found.id, name=validate_name(body.router.name))
    return respond(200, {"router": _with_bindings(request, repo, found)})


@router.delete("/{router_id}", status_code=204, responses=FORBIDDEN)
@ends_transaction
def delete_router(
    router_id: str, repo: RepoDep, principal: PrincipalDep, if_match: IfMatchDep
) -> Response:
    found = load_router(repo, principal, router_id, "delete_router", lock=True)
    check_revision(if_match, found.revision_number)
    repo.delete_router(found.id)
    return no_content()


def _router_project(repo: Repository, router_id: str) -> str | None:
    try:
        return repo.get_router(router_id).project_id
    except RouterNotFound:
        return None


def _with_bindings(request: Request, repo: Repository, found: Router) -> dict[str, object]:
    bindings = repo.bindings_of([found.id]).get(found.id, [])
    return router_body(found, bindings, placement(request, repo, [found.id]).get(found.id, ()))


def placement(request: Request, repo: Repository, router_ids: list[str]) -> dict[str, list[str]]:
    """Router id -> the hosts placing it: with an in-process agent (embedded mode) its host for
    every router; else the hosts whose node agent reports the router's namespace."""
    local: str | None = getattr(request.app.state, "local_agent_host", None)
    if local is not None:
        return {router_id: [local] for router_id in router_ids}
    return repo.hosts.placement(router_ids) if router_ids else {}


def _id(item: Router) -> str:
    return item.id
