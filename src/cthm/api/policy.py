"""Authorization, decided here and nowhere else.

Each action a route performs is named (Neutron's names where Neutron has the resource) and maps
to one rule. Routes call `enforce`; what a principal may see at all is `can_see` (an object the
principal cannot see is reported as not found, never as forbidden, so existence does not leak)
and `list_scope` (the project a listing is narrowed to).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum

from cthm.api.errors import Forbidden
from cthm.api.principal import ADMIN_ROLE, MEMBER_ROLE, READER_ROLE, Principal


class Rule(StrEnum):
    ANYONE = "anyone"
    ADMIN = "admin"
    ADMIN_OR_PROJECT_MEMBER = "admin_or_project_member"
    ADMIN_OR_PROJECT_READER = "admin_or_project_reader"


POLICY: Mapping[str, Rule] = {
    "get_conntrack_helper_catalog": Rule.ANYONE,
    "create_router": Rule.ADMIN_OR_PROJECT_MEMBER,
    # A router's namespace is a host-wide name: letting a project pick one would let it bind
    # helpers inside any namespace on the host, another project's router included.
    "create_router:namespace": Rule.ADMIN,
    "get_router": Rule.ADMIN_OR_PROJECT_READER,
    "update_router": Rule.ADMIN_OR_PROJECT_MEMBER,
    "delete_router": Rule.ADMIN_OR_PROJECT_MEMBER,
    "create_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_MEMBER,
    "get_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_READER,
    "update_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_MEMBER,
    "delete_router_conntrack_helper": Rule.ADMIN_OR_PROJECT_MEMBER,
}


def _in_project(principal: Principal, target: str | None, roles: frozenset[str]) -> bool:
    # target None: the action is about the principal's own scope (a listing narrowed to it).
    own = target is None or target == principal.project_id
    return own and bool(principal.roles & roles)


_CHECKS: Mapping[Rule, Callable[[Principal, str | None], bool]] = {
    Rule.ANYONE: lambda p, t: True,
    Rule.ADMIN: lambda p, t: p.is_admin,
    Rule.ADMIN_OR_PROJECT_MEMBER: lambda p, t: (
        p.is_admin or _in_project(p, t, frozenset({MEMBER_ROLE}))
    ),
    Rule.ADMIN_OR_PROJECT_READER: lambda p, t: (
        p.is_admin or _in_project(p, t, frozenset({READER_ROLE, MEMBER_ROLE, ADMIN_ROLE}))
    ),
}


def allowed(principal: Principal, action: str, target_project_id: str | None) -> bool:
    rule = POLICY.get(action)
    if rule is None:  # a route naming an action missing here is a bug; fail closed, loudly
        raise LookupError(f"no policy rule for action {action!r}")
    return _CHECKS[rule](principal, target_project_id)


def enforce(principal: Principal, action: str, target_project_id: str | None) -> None:
    """Raises Forbidden (403) unless the principal may perform `action` on the target project."""
    if not allowed(principal, action, target_project_id):
        raise Forbidden(action)


def can_see(principal: Principal, project_id: str) -> bool:
    return principal.is_admin or project_id == principal.project_id


def list_scope(principal: Principal) -> str | None:
    """The only project a principal's listings show; None: every project."""
    return None if principal.is_admin else principal.project_id
