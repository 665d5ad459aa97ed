"""/v2.0/routers/{router_id}/status: an agent reports what the kernel holds for a router.

Each status is written only if its object is still at the revision the agent applied, so a
report about an older revision never overwrites what a newer change reset to PENDING. The
response says which statuses were written.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from cthm.api.deps import PrincipalDep, RepoDep, no_query
from cthm.api.routes._shared import FORBIDDEN, load_router, respond
from cthm.api.schemas import BindingStatusReport, RouterStatusRequest, RouterStatusResponse
from cthm.domain import InvalidInput, Status, validate_status_reason, validate_uuid
from cthm.store import Repository

router = APIRouter(prefix="/v2.0/routers/{router_id}", tags=["status"])


@router.put(
    "/status",
    response_model=RouterStatusResponse,
    dependencies=[Depends(no_query)],
    responses=FORBIDDEN,
)
def update_router_status(
    router_id: str, body: RouterStatusRequest, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    owner = load_router(repo, principal, router_id, "update_router_status")
    report = body.status
    reason = validate_status_reason(report.status_reason, field="status.status_reason")
    items = _checked(report.conntrack_helpers)
    router_written = repo.set_router_status(
        owner.id, Status(report.status), reason, revision_number=report.revision_number
    )
    own = _binding_ids(repo, owner.id)
    written = [
        item.id in own
        and repo.set_binding_status(
            item.id, Status(item.status), item.status_reason, revision_number=item.revision_number
        )
        for item in items
    ]
    body_out = {
        "id": owner.id,
        "revision_number": report.revision_number,
        "written": router_written,
        "conntrack_helpers": [
            {"id": item.id, "revision_number": item.revision_number, "written": ok}
            for item, ok in zip(items, written, strict=True)
        ],
    }
    return respond(200, {"status": body_out})


def _checked(items: list[BindingStatusReport]) -> list[BindingStatusReport]:
    """Every report valid (canonical ids, each binding once) before anything is written."""
    seen: set[str] = set()
    result = []
    for index, item in enumerate(items):
        field = f"status.conntrack_helpers[{index}]"
        binding_id = validate_uuid(item.id, field=f"{field}.id")
        if binding_id in seen:
            raise InvalidInput(f"binding {binding_id} is reported twice", field=f"{field}.id")
        seen.add(binding_id)
        reason = validate_status_reason(item.status_reason, field=f"{field}.status_reason")
        result.append(item.model_copy(update={"id": binding_id, "status_reason": reason}))
    return result


def _binding_ids(repo: Repository, router_id: str) -> set[str]:
    """The router's bindings, those the agent refused as invalid included: a report may set
    only these (the repository's status write looks a binding up by its own id alone)."""
    valid, rejected = repo.desired_bindings(router_id)
    return {b.id for b in valid} | {b_id for b_id, _revision, _why in rejected}
