"""What several routes do the same way: path ids, loading a router the caller may act on,
If-Match revisions and JSON responses."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from cthm.api import policy
from cthm.api.errors import Denial, HiddenRouter, shown
from cthm.api.principal import Principal
from cthm.api.query import ListRequest, Page, pagination_links, select_fields
from cthm.api.schemas import ErrorResponse
from cthm.domain import (
    BindingNotFound,
    HelperBinding,
    InvalidInput,
    ListQuery,
    MarkerNotFound,
    NotFound,
    PreconditionFailed,
    Router,
    RouterNotFound,
    validate_uuid,
)
from cthm.store import Repository

# For routes where some role may see the target but not act on it.
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "the policy denies this action"}
}


def path_id(value: str, not_found: Callable[[str], NotFound]) -> str:
    """A path id that is not a UUID names nothing: 404, as an unknown UUID."""
    try:
        return validate_uuid(value)
    except InvalidInput:
        raise not_found(shown(value)) from None


def load_router(
    repo: Repository, principal: Principal, router_id: str, action: str, *, lock: bool = False
) -> Router:
    """The router in the path, if the principal may see it and perform `action` on it.

    lock: the router is about to be changed as read (an If-Match check): its row stays locked
    until the commit, so a concurrent writer (another replica) waits and then sees the change."""
    router = _visible_router(repo, principal, router_id, action, lock=lock)
    policy.enforce(principal, action, router.project_id, target_type="router", target_id=router.id)
    return router


def load_binding(
    repo: Repository,
    principal: Principal,
    router_id: str,
    binding_id: str,
    action: str,
    *,
    lock: bool = False,
) -> tuple[Router, HelperBinding]:
    """The router and binding in the path, if the principal may see both and perform `action`.

    Both are looked up before the action is checked: a binding of another project is not found
    (404) even for a principal that may not perform the action on its own router's bindings.
    lock: as load_router's, for both (the router first, as every binding write locks)."""
    router = _visible_router(repo, principal, router_id, action, lock=lock)
    checked = path_id(binding_id, lambda text: BindingNotFound(text, router.id))
    try:
        binding = repo.get_binding(router.id, checked, lock=lock)
    except BindingNotFound:
        # Only on this (rare) path: is it another project's binding? Then it is a probe.
        elsewhere = repo.list_bindings(ListQuery(filters={"id": (checked,)}))
        if elsewhere and not policy.can_see(principal, elsewhere[0].project_id):
            raise HiddenBinding(checked, router.id, action, elsewhere[0].project_id) from None
        raise
    policy.enforce(
        principal,
        action,
        router.project_id,
        target_type="conntrack_helper",
        target_id=binding.id,
    )
    return router, binding


def _visible_router(
    repo: Repository, principal: Principal, router_id: str, action: str, *, lock: bool = False
) -> Router:
    checked = path_id(router_id, RouterNotFound)
    scope = policy.list_scope(principal)  # None: the principal sees every project
    if scope is not None:
        # Another project's router and an unknown id take the same path: one query that returns
        # one row either way, then the same answer, so neither the answer nor its time tells
        # them apart (the denied event is only queued, see cthm.api.audit).
        owner = repo.router_project(checked)
        if owner is None:
            raise RouterNotFound(checked)
        if owner != scope:
            # never 403: that would say the router exists; recorded as a denied attempt
            raise HiddenRouter(checked, action, owner)
    return repo.get_router(checked, lock=lock)


class HiddenBinding(Denial, BindingNotFound):
    """A binding of a project the principal may not see, asked for through one of its own
    routers: answered exactly as an unknown id, recorded as a denied attempt."""

    def __init__(self, binding_id: str, router_id: str, action: str, project_id: str) -> None:
        super().__init__(binding_id, router_id)
        self.action = action
        self.target_type = "conntrack_helper"
        self.target_id = binding_id
        self.target_project_id = project_id


class HiddenMarker(Denial, MarkerNotFound):
    """A list marker naming an item of a project the principal may not see: answered exactly
    as an unknown marker, recorded as a denied attempt."""

    def __init__(self, marker: str, action: str, target_type: str, project_id: str) -> None:
        super().__init__(marker)
        self.action = action
        self.target_type = target_type
        self.target_id = marker
        self.target_project_id = project_id


@contextmanager
def marker_probes(
    principal: Principal,
    action: str,
    target_type: str,
    project_of: Callable[[str], str | None],
) -> Iterator[None]:
    """Around a listing: a marker the store did not find among what the caller may see is
    looked up everywhere (only on this error path); if it names another project's item, the
    same error becomes a denied attempt. project_of: the item's project, None if no such item."""
    try:
        yield
    except MarkerNotFound as error:
        project_id = project_of(error.marker)
        if project_id is not None and not policy.can_see(principal, project_id):
            raise HiddenMarker(error.marker, action, target_type, project_id) from None
        raise


def binding_project(repo: Repository, binding_id: str) -> str | None:
    """The project of the binding with this id, on any router; None if there is none."""
    found = repo.list_bindings(ListQuery(filters={"id": (binding_id,)}))
    return found[0].project_id if found else None


def check_revision(expected: int | None, current: int) -> None:
    if expected is not None and expected != current:
        raise PreconditionFailed(
            f"Constrained to revision_number {expected}, but the current revision is {current}"
        )


def collection_url(request: Request) -> str:
    return str(request.url.replace(query=""))


def list_response(
    request: Request,
    collection: str,
    items: Iterable[dict[str, Any]],
    listing: ListRequest,
    page: Page[Any],
    id_of: Callable[[Any], str],
) -> JSONResponse:
    """A Neutron list body: `{collection: [...]}` with the requested fields, plus
    `<collection>_links` when there are pages before or after this one."""
    body: dict[str, object] = {collection: [select_fields(item, listing.fields) for item in items]}
    links = pagination_links(collection_url(request), listing, page, id_of)
    if links:
        body[f"{collection}_links"] = links
    return respond(200, body)


def respond(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def no_content() -> Response:
    return Response(status_code=204)
