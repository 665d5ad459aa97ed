"""Several hosts: node agents, where routers are placed, and one status out of many hosts' reports.

A node agent manages the routers whose namespace its host reports (placement by discovery) and
reports on each of them for its own host. A router placed on several hosts (HA) has one report
per host; `aggregate_status` makes the router's (and each binding's) single status out of them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cthm.domain.agent_status import AGENT_ID_NAMESPACE
from cthm.domain.errors import InvalidInput, NotFound
from cthm.domain.models import HelperBinding, Router
from cthm.domain.types import Status
from cthm.domain.validation import validate_status_reason

HOST_MAX = 255
# A host name is an argv word and part of URLs and log lines: letters, digits, '.', '_', '-',
# not starting with '-' (option injection) or '.' (hidden, '..').
HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

CHANGE_MODIFIED = "MODIFIED"
CHANGE_DELETED = "DELETED"
# Nothing desired changed: the agents placing the router reconcile it in full (`cthm router
# resync`). Agents take any kind they do not know as "reconcile this router".
CHANGE_RESYNC = "RESYNC"


def validate_host(value: object, field: str = "host") -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"must be a string, not {type(value).__name__}", field=field)
    if not 1 <= len(value) <= HOST_MAX or not HOST_NAME.fullmatch(value):
        raise InvalidInput(
            f"must be 1-{HOST_MAX} characters of letters, digits, '_', '.', '-', "
            "not starting with '-' or '.'",
            field=field,
        )
    return value


def node_agent_id(host: str) -> str:
    """A node agent's id: the same at every start on one host, with no record to keep there."""
    return str(uuid.uuid5(AGENT_ID_NAMESPACE, f"host:{host}"))


class AgentNotFound(NotFound):
    kind = "AgentNotFound"

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"Agent {agent_id} could not be found.")
        self.agent_id = agent_id


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change feed: this router's desired state changed (or it was deleted)."""

    revision: int
    router_id: str
    namespace: str
    kind: str  # CHANGE_MODIFIED | CHANGE_DELETED | CHANGE_RESYNC


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """A node agent as the database knows it."""

    id: str
    host: str
    started_at: datetime | None
    heartbeat_at: datetime
    created_at: datetime
    configurations: Mapping[str, Any]
    registered_by: str | None

    def alive(self, now: datetime, down_time: float) -> bool:
        return is_alive(self.heartbeat_at, now, down_time)


def is_alive(heartbeat_at: datetime | None, now: datetime, down_time: float) -> bool:
    """Reported within down_time seconds before now (Neutron's agent_down_time)."""
    return heartbeat_at is not None and now - heartbeat_at <= timedelta(seconds=down_time)


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host's last report on a router or binding (revision_number None: no report)."""

    host: str
    revision_number: int | None
    status: Status | None
    reason: str
    alive: bool
    heartbeat_at: datetime | None


def _iso(value: datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def aggregate_status(
    revision: int, hosts: Sequence[HostStatus], *, what: str
) -> tuple[Status, str]:
    """The one status of a router (what = f"namespace {ns}") or binding (what = "") at
    `revision` out of its hosts' reports: ACTIVE only when every host placing it is alive and
    reports ACTIVE at this revision; any ERROR or dead agent makes it ERROR; otherwise PENDING.
    The reason names the hosts that are failing, dead or behind (in host name order)."""
    if not hosts:
        return Status.PENDING, (f"no agent reports {what} on its host" if what else "")
    problems: list[str] = []
    notes: list[str] = []
    error = behind = False
    for host in sorted(hosts, key=lambda h: h.host):
        name = host.host
        if not host.alive:
            error = True
            problems.append(f"host {name}: agent dead (last report {_iso(host.heartbeat_at)})")
        elif host.revision_number != revision or host.status is None:
            behind = True
            problems.append(f"host {name}: not yet at revision {revision}")
        elif host.status is Status.ERROR:
            error = True
            problems.append(f"host {name}: {host.reason}")
        elif host.status is Status.PENDING:
            behind = True
            problems.append(f"host {name}: {host.reason or f'not yet at revision {revision}'}")
        elif host.reason:
            notes.append(f"host {name}: {host.reason}")
    if len(hosts) == 1 and not problems:
        return Status.ACTIVE, validate_status_reason(hosts[0].reason)
    status = Status.ERROR if error else Status.PENDING if behind else Status.ACTIVE
    return status, validate_status_reason("; ".join(problems + notes))


@dataclass(frozen=True, slots=True)
class HostView:
    """A router as one host's agent needs it. router.status/status_reason and each binding's are
    THIS host's last report at the current revision (PENDING, "" when none). invalid: the router
    row fails validation (router then carries the row's values unchecked; bindings are empty)."""

    router: Router
    bindings: tuple[HelperBinding, ...]
    rejected: tuple[tuple[str, int, str], ...]  # (binding id, revision, reason)
    invalid: str | None = None


@dataclass(frozen=True, slots=True)
class HostRouterState:
    """A router on one host placing it: the host's agent and its last report."""

    host: str
    agent_id: str
    alive: bool
    heartbeat_at: datetime | None
    revision_number: int | None
    status: Status | None
    reason: str
    kernel: Mapping[str, Any] | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AgentReportResult:
    """What a node agent's report did: its record, whether it is new, and the routers placed on
    its host as (router id, namespace, revision)."""

    agent: AgentRecord
    created: bool
    placed: list[tuple[str, str, int]]
