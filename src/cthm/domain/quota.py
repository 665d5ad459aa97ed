"""Quotas on bindings, as Neutron's: a limit per project and a limit per router, -1 unlimited.

A binding counts against the project of its router (whoever creates it, admins included) and
against its router. Bindings never move between routers or projects, so only a create can
exceed a quota.
"""

from __future__ import annotations

from dataclasses import dataclass

from cthm.domain.errors import Conflict

UNLIMITED = -1
DEFAULT_BINDINGS_PER_PROJECT = 1000
DEFAULT_BINDINGS_PER_ROUTER = 100
RESOURCE = "conntrack_helper"


@dataclass(frozen=True, slots=True)
class BindingQuota:
    """The limits that apply to one project's bindings; UNLIMITED (-1): no limit."""

    per_project: int = DEFAULT_BINDINGS_PER_PROJECT
    per_router: int = DEFAULT_BINDINGS_PER_ROUTER

    def __post_init__(self) -> None:
        for name in ("per_project", "per_router"):
            value = getattr(self, name)
            if type(value) is not int or value < UNLIMITED:
                raise ValueError(f"{name} must be an integer >= -1 (-1: unlimited), not {value!r}")

    @property
    def unlimited(self) -> bool:
        return self.per_project == UNLIMITED and self.per_router == UNLIMITED


class OverQuota(Conflict):
    """A create that would take a project or a router past its binding quota (409), with
    Neutron's type name and message, followed by which limit and its value."""

    kind = "OverQuota"

    def __init__(self, quota: str, limit: int, scope: str) -> None:
        super().__init__(
            f"Quota exceeded for resources: ['{RESOURCE}']. The limit is {limit} conntrack "
            f"helpers per {quota.removeprefix('quota_bindings_per_')} ({quota}), reached "
            f"for {scope}."
        )
        self.quota = quota
        self.limit = limit
