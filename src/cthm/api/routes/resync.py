"""POST /v2.0/routers/{router_id}/resync: reconcile the router in full now (`cthm router resync`).

Nothing desired changes (no new revision). The in-process agent, when there is one, is told at
once (domain.ResyncRequester, given to create_app): its next reconcile of the router reads and
compares the whole table and the raw tables again, as the periodic resync does. Node agents
(several hosts) hear of it through the change feed: an entry of kind RESYNC, which their watch
turns into the same full reconcile. Accepted (202), not done: `cthm status ROUTER` shows when
it was verified.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api.deps import PrincipalDep, RepoDep, no_query
from cthm.api.routes._shared import FORBIDDEN, load_router, respond
from cthm.domain import ResyncRequester

ACTION = "resync_router"

router = APIRouter(prefix="/v2.0/routers/{router_id}", tags=["routers"])


class ResyncPublic(BaseModel):
    router_id: str
    namespace: str
    agent: str = Field(
        description="local: the in-process agent was told; hosts: the node agents placing the "
        "router hear of it through the change feed"
    )


class ResyncResponse(BaseModel):
    resync: ResyncPublic


@router.post(
    "/resync",
    status_code=202,
    response_model=ResyncResponse,
    dependencies=[Depends(no_query)],
    responses=FORBIDDEN,
)
def resync_router(
    router_id: str, request: Request, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    found = load_router(repo, principal, router_id, ACTION)
    repo.request_resync(found.id)
    requester: ResyncRequester | None = getattr(request.app.state, "resync", None)
    if requester is not None:
        requester(found.id)
    body = {
        "router_id": found.id,
        "namespace": found.namespace,
        "agent": "local" if requester is not None else "hosts",
    }
    return respond(202, {"resync": body})
