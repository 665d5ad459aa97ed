"""GET /v2.0/agents and /v2.0/agents/{agent_id}: the agent of this server, as Neutron shows its
agents (so `openstack network agent list|show` and openstacksdk's `agents()` work).

The agent is reached through a callable given to create_app (domain.AgentsProvider: the API
never imports the agent), which returns domain.AgentReport values; without one (agent_enabled
false) the list is empty and every id is unknown.

- id: derived from the host name and the data directory (domain.derive_agent_id): stable
  across restarts with no record to store, distinct for two servers on one host.
- alive: the worker and timer threads run and the last resync (every router queued again) is
  at most ALIVE_RESYNCS resync intervals old, as Neutron's agent_down_time is a few report
  intervals.
- heartbeat_timestamp: the last resync or finished reconcile, whichever is later.
- created_at: cthm keeps no agent record, so it is when this agent started (as started_at).
- Admin and reader only (Neutron: get_agent is admin, system reader); anyone else is refused
  with 403 whatever the id, so nothing can be probed. The agent is not configured through the
  API: PUT and DELETE are 405 (Allow: GET), never a 403 or 404 that would suggest another token
  or another id could succeed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api import policy
from cthm.api.deps import PrincipalDep, QueryDep
from cthm.api.query import (
    FieldSpec,
    ResourceSpec,
    openapi_parameters,
    parse_bool,
    parse_list_request,
    parse_show_request,
    parse_text,
    parse_uuid,
    select_fields,
)
from cthm.api.routes._shared import FORBIDDEN, list_response, path_id, respond
from cthm.api.schemas import Link, format_timestamp
from cthm.domain import (
    AgentReport,
    AgentSnapshot,
    AgentsProvider,
    ListQuery,
    MarkerNotFound,
    NotFound,
    SortDir,
)

AGENT_TYPE = "cthm conntrack helper agent"
BINARY = "cthm"
TOPIC = "cthm"
ALIVE_RESYNCS = 2.0
ACTION = "get_agent"

router = APIRouter(prefix="/v2.0/agents", tags=["agents"])


class AgentNotFound(NotFound):
    kind = "AgentNotFound"

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"Agent {agent_id} could not be found.")


class AgentCounts(BaseModel):
    applied: int = Field(description="reconciles that wrote and verified a transaction")
    noop: int = Field(description="reconciles that found the kernel as desired")
    failed: int
    removed: int = Field(description="deleted routers whose table was removed")
    drift: int = Field(description="kernel tables found changed behind cthm's back, repaired")


class AgentConfigurations(BaseModel):
    backend: str = Field(description="nftables or iptables")
    chosen_by: Literal["auto", "configuration"]
    reason: str = Field(description="why this backend")
    iptables_flavour: str | None = Field(description="nft, legacy or default; null: nftables")
    iptables_flavour_reason: str | None
    retired_backends: list[str] = Field(description="backends whose rules are migrated away")
    routers: int = Field(description="routers whose kernel state this agent keeps")
    counts: AgentCounts
    queue_depth: int = Field(description="routers waiting to be reconciled (or retried)")
    resync_interval: float = Field(description="seconds between full resyncs")
    deployment_id: str | None = Field(
        description="this database's deployment identity, which marks every table or chain "
        "cthm writes (`cthm:<id>`)"
    )
    unclaimed_kernel_state: dict[str, str] = Field(
        description="cthm tables or chains the start-up sweep found in namespaces no router of "
        "this deployment claims and left alone: namespace -> the deployment id they carry, or "
        "`unmarked` (written before deployment identities, or by hand)"
    )


class AgentPublic(BaseModel):
    id: str
    agent_type: str
    binary: str
    host: str
    topic: str
    alive: bool
    admin_state_up: bool
    created_at: str | None
    started_at: str | None
    heartbeat_timestamp: str | None = Field(description="last resync or finished reconcile")
    availability_zone: str | None
    description: str
    configurations: AgentConfigurations


class AgentResponse(BaseModel):
    agent: AgentPublic


class AgentListResponse(BaseModel):
    agents: list[AgentPublic]
    agents_links: list[Link] | None = Field(default=None, description="only when paginated")


AGENT_SPEC = ResourceSpec(
    collection="agents",
    fields={
        "id": FieldSpec("id", parse_uuid),
        "agent_type": FieldSpec("agent_type", parse_text),
        "binary": FieldSpec("binary", parse_text),
        "host": FieldSpec("host", parse_text),
        "topic": FieldSpec("topic", parse_text),
        "alive": FieldSpec("alive", parse_bool),
        "admin_state_up": FieldSpec("admin_state_up", parse_bool),
        "created_at": FieldSpec("created_at"),
        "started_at": FieldSpec("started_at"),
        "heartbeat_timestamp": FieldSpec("heartbeat_timestamp"),
        "availability_zone": FieldSpec("availability_zone", parse_text),
        "description": FieldSpec("description", parse_text),
        "configurations": FieldSpec(),
    },
)

Body = dict[str, Any]


@router.get(
    "",
    response_model=AgentListResponse,
    responses=FORBIDDEN,
    openapi_extra=openapi_parameters(AGENT_SPEC),
)
def list_agents(request: Request, params: QueryDep, principal: PrincipalDep) -> JSONResponse:
    policy.enforce(principal, ACTION, None, target_type="agent")
    listing = parse_list_request(params, AGENT_SPEC)
    page = listing.page(select(_bodies(request), listing.query))
    return list_response(request, "agents", page.items, listing, page, _id)


@router.get(
    "/{agent_id}",
    response_model=AgentResponse,
    responses=FORBIDDEN,
    openapi_extra=openapi_parameters(AGENT_SPEC, listing=False),
)
def show_agent(
    agent_id: str, request: Request, params: QueryDep, principal: PrincipalDep
) -> JSONResponse:
    policy.enforce(principal, ACTION, None, target_type="agent", target_id=agent_id[:64])
    fields = parse_show_request(params, AGENT_SPEC)
    wanted = path_id(agent_id, AgentNotFound)
    found = next((body for body in _bodies(request) if body["id"] == wanted), None)
    if found is None:
        raise AgentNotFound(wanted)
    return respond(200, {"agent": select_fields(found, fields)})


def _bodies(request: Request) -> list[Body]:
    provider: AgentsProvider | None = getattr(request.app.state, "agents", None)
    return [agent_body(report) for report in provider()] if provider is not None else []


def _id(body: Body) -> str:
    return str(body["id"])


def is_alive(snapshot: AgentSnapshot) -> bool:
    since = snapshot.seconds_since_resync
    return (
        snapshot.threads_alive
        and since is not None
        and since <= ALIVE_RESYNCS * snapshot.resync_interval
    )


def agent_body(report: AgentReport) -> Body:
    snapshot = report.snapshot
    beats = [t for t in (snapshot.last_resync_at, snapshot.last_reconcile_at) if t is not None]
    started = format_timestamp(snapshot.started_at)
    return {
        "id": report.id,
        "agent_type": AGENT_TYPE,
        "binary": BINARY,
        "host": report.host,
        "topic": TOPIC,
        "alive": is_alive(snapshot),
        "admin_state_up": True,
        "created_at": started,
        "started_at": started,
        "heartbeat_timestamp": format_timestamp(max(beats)) if beats else None,
        "availability_zone": None,
        "description": "",
        "configurations": {
            "backend": report.backend,
            "chosen_by": report.chosen_by,
            "reason": report.reason,
            "iptables_flavour": report.iptables_flavour,
            "iptables_flavour_reason": report.iptables_flavour_reason,
            "retired_backends": list(report.retired_backends),
            "routers": snapshot.routers,
            "counts": {
                name: int(snapshot.counts.get(name, 0)) for name in AgentCounts.model_fields
            },
            "queue_depth": snapshot.queue_depth,
            "resync_interval": snapshot.resync_interval,
            "deployment_id": snapshot.deployment_id,
            "unclaimed_kernel_state": {
                namespace: owner or "unmarked"
                for namespace, owner in sorted(snapshot.unclaimed.items())
            },
        },
    }


def select(bodies: Iterable[Body], query: ListQuery) -> list[Body]:
    """A ListQuery over bodies in memory, as the store runs one over rows: sort order (then
    id), keyset pagination after the marker (which need not match the filters), filters,
    limit."""
    items = list(bodies)
    sort = list(query.sort)
    if not any(column == "id" for column, _ in sort):
        sort.append(("id", SortDir.ASC))
    if query.page_reverse:
        sort = [(c, SortDir.DESC if d is SortDir.ASC else SortDir.ASC) for c, d in sort]
    for column, direction in reversed(sort):  # stable sorts, least significant key first
        items.sort(key=lambda b: _sort_key(b[column]), reverse=direction is SortDir.DESC)
    if query.marker is not None:
        index = next((i for i, b in enumerate(items) if b["id"] == query.marker), None)
        if index is None:
            raise MarkerNotFound(query.marker)
        items = items[index + 1 :]
    items = [b for b in items if all(b[k] in values for k, values in query.filters.items())]
    return items if query.limit is None else items[: query.limit]


def _sort_key(value: object) -> tuple[bool, str]:
    return value is None, "" if value is None else str(value)  # nulls last
