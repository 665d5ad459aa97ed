"""Authorization, decided here and nowhere else.

Each action a route performs is named (Neutron's names where Neutron has the resource) and maps
to one rule in POLICY, the table to read to know who may do what. Routes call `enforce`. What a
principal may see at all is `can_see`: an object of a project the principal cannot see is
reported as not found, never as forbidden, so ids cannot be probed. `list_scope` is the project
a listing is narrowed to.

Roles (cthm.domain.Role): admin does everything in every project; member manages the bindings
of its own project's routers and reads them; reader reads its own project; agent reads the
desired state of every project and writes status, nothing else. Admin and reader (of any
project) see the agents serving the API, as Neutron's operators and system readers do.

A token may also be limited to one host (an agent token of a node agent): `enforce_host` then
refuses it everything done for another host, so a compromised node cannot speak for another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from cthm.api.errors import Forbidden
from cthm.api.principal import Principal
from cthm.domain import ALIASES, HelperSpec, Role


class Rule(StrEnum):
    """Who passes. "The project" is the target's project; None as a target means every project
    (an unscoped listing), which only admin and agent may ask for."""

    ANYONE = "any authenticated caller"
    ADMIN = "admin"
    ADMIN_OR_AGENT = "admin, or agent"
    ADMIN_OR_PROJECT_MEMBER = "admin, or member of the project"
    READER = "admin, agent, or reader or member of the project"
    ADMIN_OR_OPERATOR_ALLOWED = "admin, or the operator allows it for the project"


POLICY: Mapping[str, Rule] = {
    "get_conntrack_helper_catalog": Rule.ANYONE,
    # A router stands for a namespace on a host: only an admin may register or remove one.
    "create_router": Rule.ADMIN,
    # In addition, when the create names the router's id (adoption of a Neutron router).
    "create_router:id": Rule.ADMIN,
    "get_router": Rule.READER,
    "get_router_kernel_state": Rule.READER,  # the same rule as get_router
    "update_router": Rule.ADMIN_OR_PROJECT_MEMBER,  # its name only
    "delete_router": Rule.ADMIN,
    # A full reconcile now (reads the kernel again); changes nothing desired.
    "resync_router": Rule.ADMIN_OR_PROJECT_MEMBER,
    "create_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_MEMBER,
    "get_router_conntrack_helper": Rule.READER,
    "update_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_MEMBER,
    "delete_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_MEMBER,
    # In addition to the rule above, when the binding's helper (after the change) is high-risk.
    "create_router_conntrack_helper:high_risk_helper": Rule.ADMIN_OR_OPERATOR_ALLOWED,
    "update_router_conntrack_helper:high_risk_helper": Rule.ADMIN_OR_OPERATOR_ALLOWED,
    # What an agent reports the kernel holds.
    "update_router_status": Rule.ADMIN_OR_AGENT,
    # Node agents (several hosts): registration and heartbeat, the routers placed on a host,
    # a host's report on one of them, the change feed. An agent token limited to one host may
    # act only for that host (enforce_host).
    "report_agent_state": Rule.ADMIN_OR_AGENT,
    "get_host_routers": Rule.ADMIN_OR_AGENT,
    "update_host_router_status": Rule.ADMIN_OR_AGENT,
    "watch_changes": Rule.ADMIN_OR_AGENT,
    "get_audit_events": Rule.ADMIN,
    # The agents serving this API (host name, backend, counts over every project): operators
    # only, as Neutron's get_agent. A project's reader must not learn host-wide facts.
    "get_agent": Rule.ADMIN,
    # Forgets a node agent and its per-host rows.
    "delete_agent": Rule.ADMIN,
    # API tokens: whoever holds one of these can make a token of any project and role.
    "create_auth_token": Rule.ADMIN,
    "get_auth_token": Rule.ADMIN,
    # Prometheus metrics: host-wide counts over every project (or --metrics-listen, no token).
    "get_metrics": Rule.ADMIN,
    "delete_auth_token": Rule.ADMIN,
}

# What a host-limited token may not do at all: a router's status without a host is written
# whichever host places the router (such a token reports through /v2.0/hosts/{its host}).
NOT_FOR_ONE_HOST = frozenset({"update_router_status"})

HIGH_RISK_SUFFIX = ":high_risk_helper"
HIGH_RISK_WHY = "NAT slipstreaming, CVE history"
ALL_HIGH_RISK = "*"

_READ_ROLES = frozenset({Role.READER, Role.MEMBER})


def _own(principal: Principal, project_id: str | None, roles: frozenset[Role]) -> bool:
    return project_id == principal.project_id and bool(principal.roles & roles)


def _admin(p: Principal) -> bool:
    return Role.ADMIN in p.roles


def _agent(p: Principal) -> bool:
    return Role.AGENT in p.roles


Check = Callable[[Principal, str | None, bool], bool]

_CHECKS: Mapping[Rule, Check] = {
    Rule.ANYONE: lambda p, project, allows: True,
    Rule.ADMIN: lambda p, project, allows: _admin(p),
    Rule.ADMIN_OR_AGENT: lambda p, project, allows: _admin(p) or _agent(p),
    Rule.ADMIN_OR_PROJECT_MEMBER: lambda p, project, allows: (
        _admin(p) or _own(p, project, frozenset({Role.MEMBER}))
    ),
    Rule.READER: lambda p, project, allows: _admin(p) or _agent(p) or _own(p, project, _READ_ROLES),
    Rule.ADMIN_OR_OPERATOR_ALLOWED: lambda p, project, allows: _admin(p) or allows,
}


def allowed(
    principal: Principal,
    action: str,
    target_project_id: str | None,
    *,
    operator_allows: bool = False,
) -> bool:
    """Whether the principal may perform `action` on a target of `target_project_id` (None:
    every project). operator_allows: the configuration allows it (high-risk helpers)."""
    rule = POLICY.get(action)
    if rule is None:  # a route naming an action missing here is a bug; fail closed, loudly
        raise LookupError(f"no policy rule for action {action!r}")
    if principal.host is not None and action in NOT_FOR_ONE_HOST:
        return False
    return _CHECKS[rule](principal, target_project_id, operator_allows)


# The changes the audit trail records (their `success` events come from the store, in the
# change's transaction). When one of them was allowed and the request then fails (a conflict,
# a stale revision, bad input found after the check, the database unavailable), the API
# records the attempt with outcome `failed` (api/app.py); reads and agents' reports never.
AUDITED_CHANGES = frozenset(
    {
        "create_router",
        "update_router",
        "delete_router",
        "resync_router",
        "create_router_conntrack_helper",
        "update_router_conntrack_helper",
        "delete_router_conntrack_helper",
        "create_auth_token",
        "delete_auth_token",
        "delete_agent",
    }
)


@dataclass(frozen=True, slots=True)
class Allowed:
    """An audited change the policy allowed in this request, with its target."""

    action: str
    target_type: str
    target_id: str | None
    target_project_id: str | None


# Per request (set by track_allowed); a list, so a route run in a worker thread (which gets a
# copy of the context) still adds to the request's own.
_allowed: ContextVar[list[Allowed] | None] = ContextVar("cthm_allowed", default=None)


def track_allowed() -> list[Allowed]:
    """Starts recording the audited changes allowed from here on (in this context and the
    threads it hands work to); returns the list they are added to."""
    found: list[Allowed] = []
    _allowed.set(found)
    return found


def enforce(
    principal: Principal,
    action: str,
    target_project_id: str | None,
    *,
    target_type: str = "",
    target_id: str | None = None,
    operator_allows: bool = False,
    message: str | None = None,
) -> None:
    """Raises Forbidden (403, the target filled in for the audit trail) unless allowed."""
    if not allowed(principal, action, target_project_id, operator_allows=operator_allows):
        raise Forbidden(
            action,
            message=message,
            target_type=target_type,
            target_id=target_id,
            target_project_id=target_project_id,
        )
    found = _allowed.get()
    if found is not None and action in AUDITED_CHANGES:
        found.append(Allowed(action, target_type, target_id, target_project_id))


def enforce_host(principal: Principal, action: str, host: str | None) -> None:
    """Raises Forbidden unless the principal may act for `host` (None: for every host): a
    token limited to one host acts for that host only, so a compromised node cannot speak
    for another."""
    if principal.host is not None and host != principal.host:
        raise Forbidden(
            action,
            message=f"this token is limited to host {principal.host}",
            target_type="host",
            target_id=host,
        )


def can_see(principal: Principal, project_id: str) -> bool:
    """Whether objects of `project_id` exist for this principal (if not: 404, never 403)."""
    return _admin(principal) or _agent(principal) or project_id == principal.project_id


def list_scope(principal: Principal) -> str | None:
    """The only project a principal's listings show; None: every project."""
    return None if can_see_all(principal) else principal.project_id


def can_see_all(principal: Principal) -> bool:
    return _admin(principal) or _agent(principal)


# --- high-risk helpers -------------------------------------------------------------------------


def operator_allows_helper(
    high_risk_projects: Mapping[str, list[str]],
    project_id: str,
    requested: str,
    spec: HelperSpec,
) -> bool:
    """Whether settings.high_risk_projects allows this helper for the project. An entry names
    the helper as bound (h323), its kernel name (RAS), an alias of it, or "*" for all."""
    names = {ALL_HIGH_RISK, requested, spec.name}
    names.update(alias for alias, targets in ALIASES.items() if spec.name in targets.values())
    return any(entry in names for entry in high_risk_projects.get(project_id, ()))


def enforce_helper(
    principal: Principal,
    action: str,
    *,
    requested: str,
    spec: HelperSpec,
    project_id: str,
    high_risk_projects: Mapping[str, list[str]],
    target_type: str,
    target_id: str | None,
) -> None:
    """`action` (create/update of a binding) with helper `requested`, resolved to `spec`: a
    high-risk helper is admin-only unless the operator allows it for the router's project."""
    if not spec.high_risk:
        return
    shown = requested if requested == spec.name else f"{requested} ({spec.name})"
    enforce(
        principal,
        action + HIGH_RISK_SUFFIX,
        project_id,
        target_type=target_type,
        target_id=target_id,
        operator_allows=operator_allows_helper(high_risk_projects, project_id, requested, spec),
        message=(
            f"helper {shown} is high-risk ({HIGH_RISK_WHY}): admin only unless the operator "
            f"allows it for project {project_id}"
        ),
    )
