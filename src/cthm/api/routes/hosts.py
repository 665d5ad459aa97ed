"""/v2.0/hosts/{host}/...: what node agents (`cthm agent run`, one per host) read and report.

- PUT  /v2.0/hosts/{host}/agent: registration, heartbeat and discovery at once: the agent
  says which router namespaces its host has (placement by discovery), how it is doing, and
  what its kernel holds; the answer is its record, the deployment id, the change feed's head
  revision and the routers now placed on the host.
- GET  /v2.0/hosts/{host}/routers[/{router_id}]: the desired state of the routers placed on
  the host, with THIS host's last report as their status (so the agent sends only changes),
  and the deleted routers whose table the host still has to remove; the list and its revision
  come from one transaction.
- PUT  /v2.0/hosts/{host}/routers/{router_id}/status: the host's report on one router; the
  router's status is then made out of every placing host's report (domain aggregate_status).
  404 when the router is not placed on the host: a node cannot mark another node's routers.
- DELETE /v2.0/hosts/{host}/tombstones/{router_id}: the host removed a deleted router's table.

Agent tokens and admins only. A token limited to one host (auth_tokens.host) acts for that host
only. A server running its own agent (embedded mode) refuses node agents' reports (409
EmbeddedAgent): two agents would fight over the same namespaces.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api import policy
from cthm.api.deps import PrincipalDep, RepoDep, SettingsDep, no_query
from cthm.api.principal import Principal
from cthm.api.routes._shared import FORBIDDEN, no_content, path_id, respond
from cthm.api.routes.agents import AgentPublic, node_agent_body
from cthm.api.routes.status import _checked as checked_binding_reports
from cthm.api.schemas import (
    AgentStateRequest,
    HostRouterStatusRequest,
    StatusWritten,
)
from cthm.domain import (
    Conflict,
    HostView,
    InvalidInput,
    RouterNotFound,
    Status,
    validate_host,
    validate_namespace,
    validate_status_reason,
)

router = APIRouter(prefix="/v2.0/hosts/{host}", tags=["hosts"])

CONFIGURATIONS_MAX_BYTES = 64 * 1024
EMBEDDED_MESSAGE = (
    "this server runs its own agent (embedded mode): start it with --no-agent to use node agents"
)


class EmbeddedAgent(Conflict):
    kind = "EmbeddedAgent"

    def __init__(self) -> None:
        super().__init__(EMBEDDED_MESSAGE)


# --- response bodies (for the OpenAPI document; routes build plain JSON) ------------------------


class PlacedRouter(BaseModel):
    id: str
    namespace: str
    revision_number: int


class AgentStateResponse(BaseModel):
    agent: AgentPublic
    deployment_id: str = Field(description="marks every table or chain cthm writes")
    revision: int = Field(description="the change feed's head: watch from here")
    agent_down_time: float = Field(description="an agent silent this long is dead (seconds)")
    kernel_usage: bool = Field(
        description="kernel summaries may carry `usage` and `usage_read_at` (helper usage)"
    )
    routers: list[PlacedRouter] = Field(description="the routers placed on this host now")


class DesiredBinding(BaseModel):
    id: str
    protocol: str
    port: int
    helper: str
    direction: str
    revision_number: int
    status: Status = Field(description="this host's last report at this revision")
    status_reason: str


class RejectedBinding(BaseModel):
    id: str
    revision_number: int
    reason: str


class DesiredRouter(BaseModel):
    id: str
    name: str
    project_id: str
    namespace: str
    revision_number: int
    status: Status = Field(description="this host's last report at this revision")
    status_reason: str
    invalid: str | None = Field(description="why the stored router is unusable; null: it is not")
    conntrack_helpers: list[DesiredBinding]
    rejected: list[RejectedBinding] = Field(description="stored bindings that are unusable")


class Tombstone(BaseModel):
    router_id: str
    namespace: str


class HostRoutersResponse(BaseModel):
    routers: list[DesiredRouter]
    tombstones: list[Tombstone]
    revision: int = Field(description="the change feed's head when this list was read")
    deployment_id: str | None


class HostRouterResponse(BaseModel):
    router: DesiredRouter


class HostStatusResponse(BaseModel):
    status: StatusWritten


ERRORS: dict[int | str, dict[str, Any]] = {
    **FORBIDDEN,
    409: {"description": "this server runs its own agent (EmbeddedAgent)"},
}


# --- routes ------------------------------------------------------------------------------------


@router.put(
    "/agent",
    response_model=AgentStateResponse,
    dependencies=[Depends(no_query)],
    responses=ERRORS,
)
def report_agent_state(
    host: str,
    body: AgentStateRequest,
    request: Request,
    repo: RepoDep,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> JSONResponse:
    name = checked_host(principal, "report_agent_state", host)
    refuse_embedded(request)
    report = body.agent
    now = datetime.now(UTC)
    down_time = settings.agent_down_time
    result = repo.hosts.record_agent_report(
        host=name,
        started_at=None if report.started_at is None else datetime.fromisoformat(report.started_at),
        namespaces=_namespaces(report.namespaces),
        configurations=_configurations(report.configurations),
        kernel=[summary.model_dump(mode="json") for summary in report.kernel],
        token_id=principal.token_id,
        now=now,
        down_time=down_time,
    )
    deployment = repo.deployment_id() or repo.create_deployment_id()
    answer = {
        "agent": node_agent_body(result.agent, now, down_time, deployment),
        "deployment_id": deployment,
        "revision": repo.hosts.head_revision(),
        "agent_down_time": down_time,
        # Kernel summaries may carry `usage` (node agents send it only when this says so).
        "kernel_usage": True,
        "routers": [
            {"id": router_id, "namespace": namespace, "revision_number": revision}
            for router_id, namespace, revision in result.placed
        ],
    }
    return respond(200, answer)


@router.get(
    "/routers",
    response_model=HostRoutersResponse,
    dependencies=[Depends(no_query)],
    responses=FORBIDDEN,
)
def list_host_routers(host: str, repo: RepoDep, principal: PrincipalDep) -> JSONResponse:
    # The revision is read BEFORE the list: where each statement sees its own snapshot
    # (PostgreSQL's READ COMMITTED), a change committed in between is then in the list and
    # replayed by the watch (harmless: reconciles are idempotent), never missed. On SQLite the
    # unit of work is one snapshot and both agree.
    name = checked_host(principal, "get_host_routers", host)
    revision = repo.hosts.head_revision()
    views = repo.hosts.host_views(name)
    tombstones = repo.hosts.host_tombstones(name)
    answer = {
        "routers": [desired_body(view) for view in views],
        "tombstones": [
            {"router_id": router_id, "namespace": namespace}
            for router_id, namespace in sorted(tombstones.items())
        ],
        "revision": revision,
        "deployment_id": repo.deployment_id(),
    }
    return respond(200, answer)


@router.get(
    "/routers/{router_id}",
    response_model=HostRouterResponse,
    dependencies=[Depends(no_query)],
    responses=FORBIDDEN,
)
def show_host_router(
    host: str, router_id: str, repo: RepoDep, principal: PrincipalDep
) -> JSONResponse:
    name = checked_host(principal, "get_host_routers", host)
    wanted = path_id(router_id, RouterNotFound)
    view = repo.hosts.host_view(name, wanted)
    if view is None:  # unknown, or not placed on this host: the same answer
        raise RouterNotFound(wanted)
    return respond(200, {"router": desired_body(view)})


@router.put(
    "/routers/{router_id}/status",
    response_model=HostStatusResponse,
    dependencies=[Depends(no_query)],
    responses=ERRORS,
)
def update_host_router_status(
    host: str,
    router_id: str,
    body: HostRouterStatusRequest,
    request: Request,
    repo: RepoDep,
    principal: PrincipalDep,
    settings: SettingsDep,
) -> JSONResponse:
    name = checked_host(principal, "update_host_router_status", host)
    refuse_embedded(request)
    wanted = path_id(router_id, RouterNotFound)
    report = body.status
    reason = validate_status_reason(report.status_reason, field="status.status_reason")
    items = checked_binding_reports(report.conntrack_helpers)
    kernel = None if report.kernel is None else report.kernel.model_dump(mode="json")
    written = repo.hosts.record_host_report(
        name,
        router_id=wanted,
        revision_number=report.revision_number,
        status=Status(report.status),
        reason=reason,
        bindings=[
            (item.id, item.revision_number, Status(item.status), item.status_reason)
            for item in items
        ],
        kernel=kernel,
        now=datetime.now(UTC),
        down_time=settings.agent_down_time,
    )
    if not written:  # not placed on this host: a node cannot speak for another's routers
        raise RouterNotFound(wanted)
    answer = {"id": wanted, "revision_number": report.revision_number, "written": True}
    return respond(200, {"status": answer})


@router.delete(
    "/tombstones/{router_id}",
    status_code=204,
    dependencies=[Depends(no_query)],
    responses=FORBIDDEN,
)
def clear_host_tombstone(
    host: str, router_id: str, repo: RepoDep, principal: PrincipalDep
) -> Response:
    name = checked_host(principal, "update_host_router_status", host)
    repo.hosts.clear_host_tombstone(name, path_id(router_id, RouterNotFound))
    return no_content()


# --- helpers -----------------------------------------------------------------------------------


def checked_host(principal: Principal, action: str, host: str) -> str:
    """The host in the path, if the principal may perform `action` for it: the role first (a
    token of another role learns nothing), then the name, then a token's host limit."""
    policy.enforce(principal, action, None, target_type="host", target_id=host[:64])
    name = validate_host(host, "host")
    policy.enforce_host(principal, action, name)
    return name


def refuse_embedded(request: Request) -> None:
    if getattr(request.app.state, "local_agent_host", None) is not None:
        raise EmbeddedAgent()


def desired_body(view: HostView) -> dict[str, Any]:
    r = view.router
    return {
        "id": r.id,
        "name": r.name,
        "project_id": r.project_id,
        "namespace": r.namespace,
        "revision_number": r.revision_number,
        "status": r.status,
        "status_reason": r.status_reason,
        "invalid": view.invalid,
        "conntrack_helpers": [
            {
                "id": b.id,
                "protocol": b.protocol,
                "port": b.port,
                "helper": b.helper,
                "direction": b.direction,
                "revision_number": b.revision_number,
                "status": b.status,
                "status_reason": b.status_reason,
            }
            for b in view.bindings
        ],
        "rejected": [
            {"id": binding_id, "revision_number": revision, "reason": reason}
            for binding_id, revision, reason in view.rejected
        ],
    }


def _namespaces(values: list[str]) -> list[str]:
    """Each a valid namespace name; repeats dropped; sorted."""
    for index, value in enumerate(values):
        validate_namespace(value, f"agent.namespaces[{index}]")
    return sorted(set(values))


def _configurations(value: Mapping[str, Any]) -> dict[str, Any]:
    try:
        # Python's JSON reader takes NaN and Infinity; no JSON answer may carry them.
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise InvalidInput(
            "must be plain JSON (no NaN or Infinity)", field="agent.configurations"
        ) from None
    size = len(text.encode())
    if size > CONFIGURATIONS_MAX_BYTES:
        raise InvalidInput(
            f"is {size} bytes of JSON, more than {CONFIGURATIONS_MAX_BYTES}",
            field="agent.configurations",
        )
    return dict(value)
