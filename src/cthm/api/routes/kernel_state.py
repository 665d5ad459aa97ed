"""GET /v2.0/routers/{router_id}/kernel_state: the router's desired assignments beside what the
agent last read back from its kernel table, the difference, when it last verified them, and the
last error.

The agent is reached through a callable given to create_app (domain.KernelStateProvider: the
API never imports the agent), which returns the agent's domain.RouterKernelState record.
Without one (no agent in this process) the kernel side is unknown: in_sync is null and
last_error says so. Desired comes from the database as it is now, so a change the agent has
not applied yet shows as a difference (in_sync false): the answer is about the kernel, not
about intentions.

`shadowed`: bindings whose connections another rule's `-j CT` (a leftover Neutron conntrack
helper rule) gets to first, as the agent found at its last read of the raw tables
(`shadow_checked_at`, every periodic resync). in_sync speaks of cthm's own table only.

`hosts`: one entry per host placing the router, each host's truth: its agent (alive or not),
its last report and the kernel summary it last sent. With an in-process agent (embedded mode)
that is one entry, from the agent's own record. With node agents (several hosts) the top level
sums them up: in_sync only if every host's is, verified_at the oldest, last_error the latest,
and `actual` the one host's when there is one (with several, each host has its own: []).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api import policy
from cthm.api.deps import CatalogDep, PrincipalDep, QueryDep, RepoDep, SettingsDep, no_query
from cthm.api.query import openapi_parameters, parse_list_request
from cthm.api.routes._shared import list_response, load_router, marker_probes, respond
from cthm.api.routes.agents import is_alive
from cthm.api.schemas import ROUTER_SPEC, format_timestamp
from cthm.domain import (
    AgentsProvider,
    Direction,
    HelperBinding,
    HelperCatalog,
    HelperUsageProvider,
    HostRouterState,
    InvalidInput,
    KernelStateProvider,
    Router,
    RouterKernelState,
    RouterNotFound,
    ShadowedBinding,
    derive_agent_id,
)
from cthm.settings import Settings
from cthm.store import Repository

NO_AGENT = "no agent in this process: the kernel state is unknown to this server"
NOT_PLACED = (
    "no agent in this process, and no node agent reports namespace {namespace} on its host: "
    "the kernel state is unknown to this server"
)

router = APIRouter(prefix="/v2.0/routers/{router_id}", tags=["kernel state"])
# Included before the routers' own routes: /v2.0/routers/{router_id} would take the path.
bulk = APIRouter(prefix="/v2.0/routers", tags=["kernel state"])


class HelperUsagePublic(BaseModel):
    connections: int = Field(description="conntrack entries of this protocol/port with the helper")
    expectations: int = Field(description="expectations the helper made for those connections")


class KernelAssignment(BaseModel):
    protocol: str
    port: int
    direction: Direction = Field(description="ingress (prerouting hook) or output (output hook)")
    helper: str = Field(description="the helper as bound (an alias such as h323 included)")
    kernel_helper: str | None = Field(
        description="the kernel's helper; null when the bound helper is no longer allowed"
    )
    usage: HelperUsagePublic | None = Field(
        default=None,
        description="desired rows: live use of the binding's helper in the namespace, read now "
        "(embedded agent), or as the node agents last read it (summed over the hosts that "
        "reported one); null when unknown (usage_error says why); absent when no one reads it",
    )


class ShadowedPublic(BaseModel):
    binding_id: str
    protocol: str
    port: int
    direction: Direction
    helper: str = Field(description="the helper as bound")
    kernel_helper: str = Field(description="the kernel's helper cthm assigns")
    rule: str = Field(description="the other rule, as iptables-save prints it")
    where: str = Field(description="table and built-in chain it runs from, e.g. raw PREROUTING")
    families: list[str] = Field(description="IPv4, IPv6: the raw tables holding it")
    foreign_helper: str | None = Field(description="what the kernel gives instead; null: none")
    conditions: list[str] = Field(description="its other matches, not evaluated: it may not match")
    effect: str


class KernelDifference(BaseModel):
    protocol: str
    port: int
    direction: str
    helper: str | None = Field(description="as bound, when a binding wants it")
    kernel_helper: str | None


class HostKernelState(BaseModel):
    host: str
    agent_id: str
    agent_alive: bool | None = Field(description="null: unknown")
    revision_number: int | None = Field(description="the revision the host last reported")
    status: str | None = Field(description="the host's last report; null: none yet")
    status_reason: str
    in_sync: bool | None = Field(description="null: unknown (not read yet)")
    table_present: bool | None
    missing: list[KernelDifference]
    unexpected: list[KernelDifference]
    garbage: list[str]
    checked_at: str | None = Field(description="the host's last read of the kernel")
    verified_at: str | None
    last_error: str | None
    last_error_at: str | None
    drift_repairs: int


class KernelStatePublic(BaseModel):
    router_id: str
    namespace: str
    desired: list[KernelAssignment]
    actual: list[KernelAssignment] = Field(description="as last read back; empty when unknown")
    missing: list[KernelAssignment] = Field(description="desired, not in the kernel")
    unexpected: list[KernelAssignment] = Field(description="in the kernel, not desired")
    garbage: list[str] = Field(description="anything else in cthm's table, described")
    in_sync: bool | None = Field(description="null: unknown (no agent, or not read yet)")
    verified_at: str | None = Field(description="last read-back equal to the desired state")
    last_error: str | None
    last_error_at: str | None
    drift_repairs: int
    shadowed: list[ShadowedPublic] = Field(
        description="bindings another rule's -j CT gets to first (their status_reason says so)"
    )
    shadow_checked_at: str | None = Field(description="last read of the raw tables")
    hosts: list[HostKernelState] = Field(description="one entry per host placing the router")
    usage_error: str | None = Field(
        default=None,
        description="why the desired rows' usage is null, or which hosts have not reported it",
    )


class KernelStateResponse(BaseModel):
    kernel_state: KernelStatePublic


class KernelStateListItem(KernelStatePublic):
    name: str
    project_id: str
    status: str = Field(description="the router's status")
    status_reason: str


class KernelStateListResponse(BaseModel):
    kernel_states: list[KernelStateListItem]


Row = dict[str, object]


@router.get("/kernel_state", response_model=KernelStateResponse, dependencies=[Depends(no_query)])
def show_kernel_state(
    router_id: str,
    request: Request,
    repo: RepoDep,
    principal: PrincipalDep,
    catalog: CatalogDep,
    settings: SettingsDep,
) -> JSONResponse:
    found = load_router(repo, principal, router_id, "get_router_kernel_state")
    bindings, _rejected = repo.desired_bindings(found.id)
    desired = [_desired_row(catalog, b) for b in bindings]
    provider: KernelStateProvider | None = getattr(request.app.state, "kernel_state", None)
    local: str | None = getattr(request.app.state, "local_agent_host", None)
    if provider is None and local is None:  # several hosts: each node agent's summary
        now = datetime.now(UTC)
        states = repo.hosts.host_states(found.id, now=now, down_time=settings.agent_down_time)
        body = _from_hosts(found, desired, states)
        _add_reported_usage(states, body)
        return respond(200, {"kernel_state": body})
    body = _from_agent(request, settings, found, desired, provider, local)
    usage: HelperUsageProvider | None = getattr(request.app.state, "helper_usage", None)
    if usage is not None:
        _add_usage(usage, found.namespace, desired, body)
    return respond(200, {"kernel_state": body})


@bulk.get(
    "/kernel_states",
    response_model=KernelStateListResponse,
    openapi_extra=openapi_parameters(ROUTER_SPEC),
)
def list_kernel_states(
    request: Request,
    params: QueryDep,
    repo: RepoDep,
    principal: PrincipalDep,
    catalog: CatalogDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Every visible router's kernel_state in one answer (`cthm status` without a router),
    filtered, sorted and paged as GET /v2.0/routers is; usage is never read here."""
    scope = policy.list_scope(principal)
    policy.enforce(principal, "get_router_kernel_state", scope, target_type="router")
    listing = parse_list_request(params, ROUTER_SPEC).narrowed_to(scope)
    if listing.fields:  # the fields are a router's: they would select nothing here
        raise InvalidInput("fields= is not supported by kernel_states")
    with marker_probes(principal, "get_router", "router", lambda id: _project(repo, id)):
        page = listing.page(repo.list_routers(listing.query))
    ids = [r.id for r in page.items]
    bindings = repo.bindings_of(ids)
    provider: KernelStateProvider | None = getattr(request.app.state, "kernel_state", None)
    local: str | None = getattr(request.app.state, "local_agent_host", None)
    states: dict[str, list[HostRouterState]] = {}
    if provider is None and local is None:
        now = datetime.now(UTC)
        states = repo.hosts.host_states_of(ids, now=now, down_time=settings.agent_down_time)
    items = []
    for found in page.items:
        desired = [_desired_row(catalog, b) for b in bindings.get(found.id, [])]
        if provider is None and local is None:
            body = _from_hosts(found, desired, states.get(found.id, []))
        else:
            body = _from_agent(request, settings, found, desired, provider, local)
        body.update(
            name=found.name,
            project_id=found.project_id,
            status=found.status.value,
            status_reason=found.status_reason,
        )
        items.append(body)
    return list_response(request, "kernel_states", items, listing, page, _router_id)


def _project(repo: Repository, router_id: str) -> str | None:
    try:
        return repo.get_router(router_id).project_id
    except RouterNotFound:
        return None


def _router_id(item: Router) -> str:
    return item.id


def _from_agent(
    request: Request,
    settings: Settings,
    found: Router,
    desired: list[Row],
    provider: KernelStateProvider | None,
    local: str | None,
) -> Row:
    """The router's kernel_state from the in-process agent's record (no agent: unknown)."""
    view = provider(found.id) if provider is not None else None
    body: dict[str, object] = {
        "router_id": found.id,
        "namespace": found.namespace,
        "desired": desired,
        "actual": [],
        "missing": [],
        "unexpected": [],
        "garbage": [],
        "in_sync": None,
        "verified_at": None,
        "last_error": NO_AGENT if provider is None else None,
        "last_error_at": None,
        "drift_repairs": 0,
        "shadowed": [],
        "shadow_checked_at": None,
    }
    if view is not None:
        body.update(_compared(desired, view))
    body["hosts"] = (
        [_local_entry(request, settings, local, found, body, view)] if provider is not None else []
    )
    return body


def _local_entry(
    request: Request,
    settings: Settings,
    local: str | None,
    found: Router,
    body: Row,
    view: RouterKernelState | None,
) -> dict[str, Any]:
    """The in-process agent's entry: its host, and the top level it already is."""
    host = local or socket.gethostname()
    reports: AgentsProvider | None = getattr(request.app.state, "agents", None)
    report = next((r for r in (reports() if reports else ()) if r.host == host), None)
    return {
        "host": host,
        "agent_id": report.id if report else derive_agent_id(host, settings.data_dir),
        "agent_alive": is_alive(report.snapshot) if report else None,
        "revision_number": None if view is None else view.revision_number,
        "status": found.status.value,
        "status_reason": found.status_reason,
        "in_sync": body["in_sync"],
        "table_present": None if view is None else view.table_present,
        "missing": body["missing"],
        "unexpected": body["unexpected"],
        "garbage": body["garbage"],
        "checked_at": None if view is None else format_timestamp(view.checked_at),
        "verified_at": body["verified_at"],
        "last_error": body["last_error"],
        "last_error_at": body["last_error_at"],
        "drift_repairs": body["drift_repairs"],
    }


def _from_hosts(found: Router, desired: list[Row], states: Sequence[HostRouterState]) -> Row:
    """The top level out of every placing host's summary (see the module docstring)."""
    bound = {_key(row): row["helper"] for row in desired}
    entries = [_host_entry(found, state, bound) for state in states]
    body: Row = {
        "router_id": found.id,
        "namespace": found.namespace,
        "desired": desired,
        "actual": [],
        "missing": _union(e["missing"] for e in entries),
        "unexpected": _union(e["unexpected"] for e in entries),
        "garbage": sorted({text for e in entries for text in e["garbage"]}),
        "in_sync": None,
        "verified_at": None,
        "last_error": None,
        "last_error_at": None,
        "drift_repairs": sum(e["drift_repairs"] for e in entries),
        "shadowed": [],
        "shadow_checked_at": None,
        "hosts": entries,
    }
    if not entries:
        body["last_error"] = NOT_PLACED.format(namespace=found.namespace)
        return body
    syncs = [e["in_sync"] for e in entries]
    body["in_sync"] = False if False in syncs else None if None in syncs else True
    verified = [e["verified_at"] for e in entries]
    # ISO times in UTC with a Z: text order is time order.
    body["verified_at"] = None if None in verified else min(verified)
    failed = [e for e in entries if e["last_error"] is not None]
    if failed:
        latest = max(failed, key=lambda e: e["last_error_at"] or "")
        body["last_error"], body["last_error_at"] = latest["last_error"], latest["last_error_at"]
    if len(entries) == 1 and syncs[0] is not None:
        (only,) = entries
        held = {_key(row) for row in only["missing"]}
        actual = [row for row in desired if _key(row) not in held] + only["unexpected"]
        body["actual"] = sorted(actual, key=_order)
    return body


def _host_entry(
    found: Router, state: HostRouterState, bound: Mapping[Key, object]
) -> dict[str, Any]:
    kernel: Mapping[str, Any] = state.kernel or {}
    in_sync = kernel.get("in_sync")
    current = found.revision_number in (state.revision_number, kernel.get("revision_number"))
    if in_sync is True and not current:  # true of a revision the router has moved on from
        in_sync = False
    return {
        "host": state.host,
        "agent_id": state.agent_id,
        "agent_alive": state.alive,
        "revision_number": state.revision_number,
        "status": None if state.status is None else state.status.value,
        "status_reason": state.reason,
        "in_sync": in_sync if isinstance(in_sync, bool) else None,
        "table_present": kernel.get("table_present"),
        "missing": _named(kernel.get("missing"), bound),
        "unexpected": _named(kernel.get("unexpected"), bound),
        "garbage": [str(text) for text in kernel.get("garbage") or ()],
        "checked_at": kernel.get("checked_at"),
        "verified_at": kernel.get("verified_at"),
        "last_error": kernel.get("last_error"),
        "last_error_at": kernel.get("last_error_at"),
        "drift_repairs": int(kernel.get("drift_repairs") or 0),
    }


Key = tuple[object, ...]


def _key(row: Mapping[str, object]) -> Key:
    return row["protocol"], row["port"], row["direction"], row["kernel_helper"]


def _named(rows: object, bound: Mapping[Key, object]) -> list[Row]:
    """A host's reported assignments, each under the name it is bound as (when one wants it)."""
    if not isinstance(rows, list):
        return []
    named = []
    for row in rows:
        if isinstance(row, Mapping):
            item: Row = {k: row.get(k) for k in ("protocol", "port", "direction", "kernel_helper")}
            named.append({**item, "helper": bound.get(_key(item), item["kernel_helper"])})
    return named


def _union(groups: Iterable[list[Row]]) -> list[Row]:
    seen: dict[Key, Row] = {}
    for rows in groups:
        for row in rows:
            seen.setdefault(_key(row), row)
    return sorted(seen.values(), key=_order)


def _order(row: Mapping[str, object]) -> tuple[str, int, str, str]:
    port = row["port"]
    return (
        str(row["protocol"]),
        port if isinstance(port, int) else 0,
        str(row["direction"]),
        str(row["kernel_helper"] or ""),
    )


def _add_usage(usage: HelperUsageProvider, namespace: str, desired: list[Row], body: Row) -> None:
    """Each desired row's live usage, read now; never fails the answer (usage_error instead)."""
    # No binding, nothing to count: the kernel is not read.
    counts, reason = usage(namespace) if desired else (None, None)
    for row in desired:
        helper, port = row["kernel_helper"], row["port"]
        row["usage"] = None
        if counts is not None and isinstance(helper, str) and isinstance(port, int):
            row["usage"] = counts(helper, str(row["protocol"]), port)
    body["usage_error"] = reason


def _add_reported_usage(states: Sequence[HostRouterState], body: Row) -> None:
    """Node agents' last reads of the usage (their kernel summaries' `usage`): each desired
    row's, summed over the hosts that reported one; shown only when one did, and usage_error
    names the hosts that have not."""
    readings = {
        state.host: rows
        for state in states
        if isinstance(state.kernel, Mapping) and isinstance(rows := state.kernel.get("usage"), list)
    }
    if not readings:
        return
    totals: dict[Key, list[int]] = {}
    for rows in readings.values():
        for row in rows:
            if isinstance(row, Mapping):
                key = (row.get("helper"), row.get("protocol"), row.get("port"))
                total = totals.setdefault(key, [0, 0])
                total[0] += int(row.get("connections") or 0)
                total[1] += int(row.get("expectations") or 0)
    desired = body["desired"]
    assert isinstance(desired, list)
    shown = []
    for row in desired:  # copies: the `actual` rows may be the same objects
        found = totals.get((row["kernel_helper"], row["protocol"], row["port"]))
        usage = {"connections": found[0], "expectations": found[1]} if found else None
        shown.append({**row, "usage": usage})
    body["desired"] = shown
    silent = sorted(state.host for state in states if state.host not in readings)
    body["usage_error"] = (
        f"no usage reported yet by host(s) {', '.join(silent)}: counts are the others'"
        if silent
        else None
    )


def _desired_row(catalog: HelperCatalog, binding: HelperBinding) -> Row:
    try:
        kernel_helper: str | None = catalog.resolve(binding.helper, binding.protocol).name
    except InvalidInput:
        kernel_helper = None
    return {
        "protocol": binding.protocol.value,
        "port": binding.port,
        "direction": binding.direction.value,
        "helper": binding.helper,
        "kernel_helper": kernel_helper,
    }


def _compared(desired: list[Row], view: RouterKernelState) -> dict[str, object]:
    def key(row: Row) -> tuple[object, ...]:
        return row["protocol"], row["port"], row["direction"], row["kernel_helper"]

    # An assignment read back is shown under the name it is bound as, when a binding wants it.
    bound = {key(row): row["helper"] for row in desired}
    actual: list[Row] = []
    for a in sorted(view.actual or ()):
        row: Row = {
            "protocol": a.protocol.value,
            "port": a.port,
            "direction": a.direction.value,
            "kernel_helper": a.helper,
        }
        actual.append({**row, "helper": bound.get(key(row), a.helper)})
    held = {key(row) for row in actual}
    missing = [row for row in desired if key(row) not in held]
    unexpected = [row for row in actual if key(row) not in bound]
    garbage = list(view.garbage)
    in_sync = view.in_sync
    if in_sync is not None and view.actual is not None:
        # The agent compared with the desired state it last enforced; the database may have
        # moved on since, or hold bindings the kernel cannot take.
        in_sync = in_sync and not (missing or unexpected or garbage)
    return {
        "actual": actual,
        "missing": missing,
        "unexpected": unexpected,
        "garbage": garbage,
        "in_sync": in_sync,
        "verified_at": format_timestamp(view.verified_at),
        "last_error": view.last_error,
        "last_error_at": format_timestamp(view.last_error_at),
        "drift_repairs": view.drift_repairs,
        "shadowed": [_shadow_row(item) for item in view.shadowed],
        "shadow_checked_at": format_timestamp(view.shadow_checked_at),
    }


def _shadow_row(item: ShadowedBinding) -> Row:
    return {
        "binding_id": item.binding_id,
        "protocol": item.protocol,
        "port": item.port,
        "direction": item.direction,
        "helper": item.helper,
        "kernel_helper": item.kernel_helper,
        "rule": item.rule,
        "where": item.where,
        "families": list(item.families),
        "foreign_helper": item.foreign_helper,
        "conditions": list(item.conditions),
        "effect": item.effect,
    }
