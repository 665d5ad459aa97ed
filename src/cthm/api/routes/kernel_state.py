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
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from cthm.api.deps import CatalogDep, PrincipalDep, RepoDep, no_query
from cthm.api.routes._shared import load_router, respond
from cthm.api.schemas import format_timestamp
from cthm.domain import (
    Direction,
    HelperBinding,
    HelperCatalog,
    InvalidInput,
    KernelStateProvider,
    RouterKernelState,
    ShadowedBinding,
)

NO_AGENT = "no agent in this process: the kernel state is unknown to this server"

router = APIRouter(prefix="/v2.0/routers/{router_id}", tags=["kernel state"])


class KernelAssignment(BaseModel):
    protocol: str
    port: int
    direction: Direction = Field(description="ingress (prerouting hook) or output (output hook)")
    helper: str = Field(description="the helper as bound (an alias such as h323 included)")
    kernel_helper: str | None = Field(
        description="the kernel's helper; null when the bound helper is no longer allowed"
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


class KernelStateResponse(BaseModel):
    kernel_state: KernelStatePublic


Row = dict[str, object]


@router.get("/kernel_state", response_model=KernelStateResponse, dependencies=[Depends(no_query)])
def show_kernel_state(
    router_id: str,
    request: Request,
    repo: RepoDep,
    principal: PrincipalDep,
    catalog: CatalogDep,
) -> JSONResponse:
    found = load_router(repo, principal, router_id, "get_router_kernel_state")
    bindings, _rejected = repo.desired_bindings(found.id)
    desired = [_desired_row(catalog, b) for b in bindings]
    provider: KernelStateProvider | None = getattr(request.app.state, "kernel_state", None)
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
    return respond(200, {"kernel_state": body})


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
