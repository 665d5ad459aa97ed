"""What an agent reports about itself and about each router's kernel state, as plain values.

The agent produces them (cthm.agent) and the API presents them (GET /v2.0/agents,
GET /v2.0/routers/{id}/kernel_state); both depend on these types, neither on the other.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from cthm.domain.models import Assignment

# Fixed namespace of agent ids: uuid5(AGENT_ID_NAMESPACE, "<host>:<data directory>").
AGENT_ID_NAMESPACE = uuid.UUID("6f1c3b0e-2f64-5b8e-9d0a-63746d616765")


def derive_agent_id(host: str, data_dir: Path) -> str:
    """The agent's id: the same for every start on one host over one data directory, distinct
    for two servers on one host, with no record to store."""
    return str(uuid.uuid5(AGENT_ID_NAMESPACE, f"{host}:{data_dir.resolve()}"))


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    """How the agent is doing, read at once (for operators: the API's agents resource).

    threads_alive: started, not stopped, and every worker and the timer thread still running.
    seconds_since_resync: by the monotonic clock (None: never resynced); last_resync_at and
    last_reconcile_at: wall-clock times of the last resync (every router queued) and the last
    finished reconcile. routers: routers whose last reconcile did not remove them.
    deployment_id: the identity this agent marks kernel state with; unclaimed: what the
    start-up sweep left alone (namespace -> another deployment's id, None when unmarked)."""

    started_at: datetime | None
    last_resync_at: datetime | None
    last_reconcile_at: datetime | None
    seconds_since_resync: float | None
    threads_alive: bool
    counts: Mapping[str, int]
    queue_depth: int
    routers: int
    workers: int
    resync_interval: float
    deployment_id: str | None = None
    unclaimed: Mapping[str, str | None] = field(default_factory=dict)
    # Seconds the longest-waiting queued router has waited for its sync (None: none waits);
    # /readyz is 503 past settings.ready_queue_timeout.
    oldest_queued_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class AgentReport:
    """One agent as the server knows it: who it is and how its backend was chosen (fixed at
    start), and its snapshot, taken when the report is made."""

    id: str
    host: str
    backend: str
    chosen_by: Literal["auto", "configuration"]
    reason: str
    iptables_flavour: str | None
    iptables_flavour_reason: str | None
    retired_backends: tuple[str, ...]
    snapshot: AgentSnapshot


@dataclass(frozen=True, slots=True)
class ShadowedBinding:
    """A binding whose connections another rule's `-j CT` gets to first (netfilter.foreign):
    the kernel gives them foreign_helper (None: no helper at all) instead of kernel_helper.
    conditions: the rule's matches not evaluated (it may not match every connection)."""

    binding_id: str
    protocol: str
    port: int
    direction: str
    helper: str  # as bound (an alias such as h323 included)
    kernel_helper: str
    rule: str
    where: str
    families: tuple[str, ...]
    foreign_helper: str | None
    conditions: tuple[str, ...]
    effect: str
    reason: str  # the binding's status_reason


@dataclass(frozen=True, slots=True)
class RouterKernelState:
    """One router's kernel view as its agent last observed it.

    in_sync: True when the last read equals the desired table, False when it differs (or the
    namespace is missing), None when unknown (never read, or the read itself failed).
    actual: the assignments read back; None when unknown, () when there is no table.
    shadowed: bindings other rules' `-j CT` get to first, as of shadow_checked_at (the raw
    tables are read at the periodic resync, not on every change).
    """

    router_id: str
    namespace: str | None = None
    revision_number: int | None = None
    desired: tuple[Assignment, ...] | None = None
    actual: tuple[Assignment, ...] | None = None
    table_present: bool | None = None
    garbage: tuple[str, ...] = ()
    in_sync: bool | None = None
    checked_at: datetime | None = None  # last read of the kernel, whatever it showed
    verified_at: datetime | None = None  # last read that equalled the desired table
    last_error: str | None = None  # kept after recovery: compare last_error_at with verified_at
    last_error_at: datetime | None = None
    drift_repairs: int = 0
    shadowed: tuple[ShadowedBinding, ...] = ()
    shadow_checked_at: datetime | None = None
