"""GET /v2.0/agents and /v2.0/agents/{agent_id}: the agent of this server and the node agents of
every host, as Neutron shows its agents (so `openstack network agent list|show` and
openstacksdk's `agents()` work). DELETE /v2.0/agents/{agent_id} forgets a node agent.

The in-process agent is reached through a callable given to create_app (domain.AgentsProvider:
the API never imports the agent), which returns domain.AgentReport values; without one
(agent_enabled false) only node agents are listed.

Node agents (`cthm agent run` on each host) are records in the database, made and refreshed by
their reports (PUT /v2.0/hosts/{host}/agent): alive while the last report is at most
settings.agent_down_time seconds old (Neutron's agent_down_time); heartbeat_timestamp is that
report; created_at its first; configurations are as the agent reported them, with the keys
this body always has filled in (null or 0) where the agent left them out. DELETE forgets a
dead one and its per-host rows (409 AgentAlive while it reports, unless ?force=true); the
in-process agent is not deleted through the API (409).

- id: derived from the host name and the data directory (domain.derive_agent_id): stable
  across restarts with no record to store, distinct for two servers on one host.
- alive: the worker and timer threads run and the last resync (every router queued again) is
  at most ALIVE_RESYNCS resync intervals old, as Neutron's agent_down_time is a few report
  intervals.
- heartbeat_timestamp: the last resync or finished reconcile, whichever is later.
- created_at: cthm keeps no agent record, so it is when this agent started (as started_at).
- Admin only (Neutron: get_agent is admin); anyone else is refused with 403 whatever the id,
  so nothing can be probed. No agent is configured through the API: PUT and POST are 405.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cthm.api import policy
from cthm.api.deps import PrincipalDep, QueryDep, RepoDep, SettingsDep
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
from cthm.api.routes._shared import FORBIDDEN, list_response, no_content, path_id, respond
from cthm.api.routes.auth_tokens import parse_force
from cthm.api.schemas import Link, format_timestamp
from cthm.domain import (
    AgentNotFound,
    AgentRecord,
    AgentReport,
    AgentSnapshot,
    AgentsProvider,
    Conflict,
    ListQuery,
    MarkerNotFound,
    SortDir,
)
from cthm.store import Repository

AGENT_TYPE = "cthm conntrack helper agent"
BINARY = "cthm"
TOPIC = "cthm"
ALIVE_RESYNCS = 2.0
ACTION = "get_agent"

router = APIRouter(prefix="/v2.0/agents", tags=["agents"])


class AgentAlive(Conflict):
    kind = "AgentAlive"

    def __init__(self, agent: AgentRecord) -> None:
        beat = format_timestamp(agent.heartbeat_at)
        super().__init__(
            f"Agent {agent.id} of host {agent.host} is alive (last report {beat}): stop it "
            "first, or force it (?force=true)"
        )


class AgentInProcess(Conflict):
    kind = "AgentInProcess"

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"Agent {agent_id} runs inside this server: it stops with the server (or start the "
            "server with --no-agent), it is not deleted through the API"
        )


class AgentCounts(BaseModel):
    applied: int = Field(description="reconciles that wrote and verified a transaction")
    noop: int = Field(description="reconciles that found the kernel as desired")
    failed: int
    removed: int = Field(description="deleted routers whose table was removed")
    drift: int = Field(description="kernel tables found changed behind cthm's back, repaired")


class AgentConfigurations(BaseModel):
    backend: str | None = Field(description="nftables or iptables")
    chosen_by: Literal["auto", "configuration"] | None
    reason: str | None = Field(description="why this backend")
    iptables_flavour: str | None = Field(description="nft, legacy or default; null: nftables")
    iptables_flavour_reason: str | None
    retired_backends: list[str] = Field(description="backends whose rules are migrated away")
    routers: int = Field(description="routers whose kernel state this agent keeps")
    counts: AgentCounts
    queue_depth: int = Field(description="routers waiting to be reconciled (or retried)")
    resync_interval: float | None = Field(description="seconds between full resyncs")
    deployment_id: str | None = Field(
        description="this database's deployment identity, which marks every table or chain "
        "cthm writes (`cthm:<id>`)"
    )
    unclaimed_kernel_state: dict[str, str] = Field(
        description="cthm tables or chains the start-up sweep found in namespaces no router of "
        "this deployment claims and left alone: namespace -> the deployment id they carry, or "
        "`unmarked` (written before deployment identities, or by hand)"
    )
    # Node agents add what they report beyond these, e.g. report_interval, namespaces (how
    # many router namespaces the host has), watch ({revision, connected, events, relists}).
    model_config = ConfigDict(extra="allow")


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
def list_agents(
    request: Request,
    params: QueryDep,
    principal: PrincipalDep,
    repo: RepoDep,
    settings: SettingsDep,
) -> JSONResponse:
    policy.enforce(principal, ACTION, None, target_type="agent")
    listing = parse_list_request(params, AGENT_SPEC)
    page = listing.page(select(_bodies(request, repo, settings.agent_down_time), listing.query))
    return list_response(request, "agents", page.items, listing, page, _id)


@router.get(
    "/{agent_id}",
    response_model=AgentResponse,
    responses=FORBIDDEN,
    openapi_extra=openapi_parameters(AGENT_SPEC, listing=False),
)
def show_agent(
    agent_id: str,
    request: Request,
    params: QueryDep,
    principal: PrincipalDep,
    repo: RepoDep,
    settings: SettingsDep,
) -> JSONResponse:
    policy.enforce(principal, ACTION, None, target_type="agent", target_id=agent_id[:64])
    fields = parse_show_request(params, AGENT_SPEC)
    wanted = path_id(agent_id, AgentNotFound)
    bodies = _bodies(request, repo, settings.agent_down_time)
    found = next((body for body in bodies if body["id"] == wanted), None)
    if found is None:
        raise AgentNotFound(wanted)
    return respond(200, {"agent": select_fields(found, fields)})


FORCE_PARAMETER = {
    "name": "force",
    "in": "query",
    "required": False,
    "description": "true: forget the agent even while it reports (it registers again at its "
    "next report), which is otherwise a 409 AgentAlive",
    "schema": {"type": "boolean", "default": False},
}


@router.delete(
    "/{agent_id}",
    status_code=204,
    responses=FORBIDDEN,
    openapi_extra={"parameters": [FORCE_PARAMETER]},
)
def delete_agent(
    agent_id: str,
    request: Request,
    principal: PrincipalDep,
    repo: RepoDep,
    settings: SettingsDep,
    force: Annotated[bool, Depends(parse_force)],
) -> Response:
    """Forgets a node agent: its record, the namespaces it reported and its hosts' rows; the
    routers it placed are placed elsewhere or nowhere (PENDING) from now on."""
    policy.enforce(principal, "delete_agent", None, target_type="agent", target_id=agent_id[:64])
    wanted = path_id(agent_id, AgentNotFound)
    if any(report.id == wanted for report in _reports(request)):
        raise AgentInProcess(wanted)
    found = repo.hosts.get_agent(wanted)
    if found is None:
        raise AgentNotFound(wanted)
    now = datetime.now(UTC)
    down_time = settings.agent_down_time
    if found.alive(now, down_time) and not force:
        raise AgentAlive(found)
    repo.hosts.forget_agent(found.id, now=now, down_time=down_time)
    return no_content()


def _reports(request: Request) -> list[AgentReport]:
    provider: AgentsProvider | None = getattr(request.app.state, "agents", None)
    return list(provider()) if provider is not None else []


def _bodies(request: Request, repo: Repository, down_time: float) -> list[Body]:
    """The in-process agent (if any), then every node agent in the database."""
    bodies = [agent_body(report) for report in _reports(request)]
    nodes = repo.hosts.agents()
    if nodes:
        now = datetime.now(UTC)
        deployment = repo.deployment_id()
        bodies += [node_agent_body(agent, now, down_time, deployment) for agent in nodes]
    return bodies


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


def node_agent_body(
    agent: AgentRecord, now: datetime, down_time: float, deployment_id: str | None
) -> Body:
    """A node agent as GET /v2.0/agents shows it: the keys of the in-process agent's body,
    alive by its last report, configurations as reported (missing keys null or 0)."""
    reported: Mapping[str, Any] = agent.configurations
    counts = reported.get("counts")
    # The keys every agent body has keep their documented types whatever an agent sent (a
    # client reading the list must not trip over one host's odd report); the rest as sent.
    configurations: Body = {
        **reported,
        "backend": _text(reported.get("backend")),
        "chosen_by": _one_of(reported.get("chosen_by"), ("auto", "configuration")),
        "reason": _text(reported.get("reason")),
        "iptables_flavour": _text(reported.get("iptables_flavour")),
        "iptables_flavour_reason": _text(reported.get("iptables_flavour_reason")),
        "retired_backends": _texts(reported.get("retired_backends")),
        "routers": _count(reported.get("routers")),
        "counts": {
            name: _count(counts.get(name) if isinstance(counts, Mapping) else None)
            for name in AgentCounts.model_fields
        },
        "queue_depth": _count(reported.get("queue_depth")),
        "resync_interval": _seconds(reported.get("resync_interval")),
        "deployment_id": _text(reported.get("deployment_id")) or deployment_id,
        "unclaimed_kernel_state": _text_map(reported.get("unclaimed_kernel_state")),
    }
    return {
        "id": agent.id,
        "agent_type": AGENT_TYPE,
        "binary": BINARY,
        "host": agent.host,
        "topic": TOPIC,
        "alive": agent.alive(now, down_time),
        "admin_state_up": True,
        "created_at": format_timestamp(agent.created_at),
        "started_at": format_timestamp(agent.started_at),
        "heartbeat_timestamp": format_timestamp(agent.heartbeat_at),
        "availability_zone": None,
        "description": "",
        "configurations": configurations,
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _one_of(value: object, allowed: tuple[str, ...]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


def _texts(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _text_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


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
