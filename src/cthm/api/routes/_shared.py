"""What several routes do the same way: path ids, loading a router the caller may act on,
If-Match revisions and JSON responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from cthm.api import policy
from cthm.api.errors import HiddenRouter, shown
from cthm.api.principal import Principal
from cthm.domain import (
    InvalidInput,
    NotFound,
    PreconditionFailed,
    Router,
    RouterNotFound,
    validate_uuid,
)
from cthm.store import Repository


def path_id(value: str, not_found: Callable[[str], NotFound]) -> str:
    """A path id that is not a UUID names nothing: 404, as an unknown UUID."""
    try:
        return validate_uuid(value)
    except InvalidInput:
        raise not_found(shown(value)) from None


def load_router(repo: Repository, principal: Principal, router_id: str, action: str) -> Router:
    """The router in the path, if the principal may see it and perform `action` on it."""
    router = repo.get_router(path_id(router_id, RouterNotFound))
    if not policy.can_see(principal, router.project_id):
        # never 403: that would say the router exists; recorded as a denied attempt
        raise HiddenRouter(router.id, action, router.project_id)
    policy.enforce(principal, action, router.project_id)
    return router


def check_revision(expected: int | None, current: int) -> None:
    if expected is not None and expected != current:
        raise PreconditionFailed(
            f"Constrained to revision_number {expected}, but the current revision is {current}"
        )


def collection_url(request: Request) -> str:
    return str(request.url.replace(query=""))


def respond(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def no_content() -> Response:
    return Response(status_code=204)
