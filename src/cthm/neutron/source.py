"""The desired state of the routers this L3 agent hosts, in memory: what Neutron's server says
(bulk_pull at add_router/update_router, pushes in between), as cthm's domain values.

It is the agent's DesiredStateSource (agent/ports.py): the reconciler reads a router's desired
state from here and reports its status back. Each router is held on its own, so replacing one
router's helpers never touches another's (Neutron's extension keeps one map for all routers and
a sync of one drops the others' entries).

Revision numbers are this process's own: every change of a router's desired state moves the
router's revision (the reconciler tells drift from change by it), every helper written moves
that helper's.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cthm.agent import BindingReport, DesiredRouter, InvalidDesiredState, RouterReport
from cthm.domain import (
    Direction,
    HelperBinding,
    HelperCatalog,
    InvalidInput,
    Router,
    Status,
    parse_protocol,
    validate_name,
    validate_port,
    validate_project_id,
    validate_status_reason,
)

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "neutron"  # a router whose project id cthm's checks refuse


class NeutronHelper(Protocol):
    """What cthm reads of Neutron's ConntrackHelper object."""

    id: str
    router_id: str
    protocol: str
    port: int
    helper: str


@dataclass(frozen=True, slots=True)
class RouterStatus:
    """A router's last reported status, its helpers' with it (binding id -> (status, reason))."""

    status: Status
    reason: str
    helpers: dict[str, tuple[Status, str]]


@dataclass
class _Held:
    router: Router
    bindings: dict[str, HelperBinding] = field(default_factory=dict)
    refused: dict[str, BindingReport] = field(default_factory=dict)
    helpers: dict[str, dict[str, Any]] = field(default_factory=dict)  # Neutron's fields, by id
    cached: tuple[HelperBinding, ...] | None = None  # sorted bindings, until the next change


def make_router(
    router_id: str, namespace: str, *, name: object = None, project_id: object = None
) -> Router:
    """A cthm Router for a Neutron router; InvalidInput if its id or namespace are unusable.
    A name or project id cthm's checks refuse is replaced (they are labels here)."""
    try:
        checked_name = validate_name(name if name is not None else "")
    except InvalidInput:
        checked_name = ""
    try:
        project = validate_project_id(project_id)
    except InvalidInput:
        project = DEFAULT_PROJECT
    return Router(id=router_id, name=checked_name, project_id=project, namespace=namespace)


def helper_fields(helper: NeutronHelper) -> dict[str, Any]:
    """Neutron's fields of a helper, as the state file shows them."""
    return {
        "id": str(helper.id),
        "protocol": helper.protocol,
        "port": helper.port,
        "helper": helper.helper,
    }


def to_binding(
    catalog: HelperCatalog, router: Router, helper: NeutronHelper, revision: int
) -> HelperBinding:
    """cthm's binding for a Neutron helper (ingress: Neutron's helpers are in PREROUTING);
    InvalidInput with the reason when cthm refuses it."""
    if not isinstance(helper.protocol, str):
        raise InvalidInput("must be a string", field="protocol")
    protocol = parse_protocol(helper.protocol)
    port = validate_port(helper.port)
    if not isinstance(helper.helper, str):
        raise InvalidInput("must be a string", field="helper")
    catalog.resolve(helper.helper, protocol)
    return HelperBinding(
        id=str(helper.id),
        router_id=router.id,
        project_id=router.project_id,
        protocol=protocol,
        port=port,
        helper=helper.helper,
        direction=Direction.INGRESS,
        revision_number=revision,
    )


class NeutronSource:
    """In-memory desired state per router; thread-safe."""

    def __init__(self, catalog: HelperCatalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()
        self._routers: dict[str, _Held] = {}
        self._tombstones: dict[str, str] = {}  # deleted router id -> its namespace
        self._revisions = itertools.count(1)

    # --- what the extension tells it --------------------------------------------------

    def set_router(self, router: Router, helpers: Iterable[NeutronHelper]) -> None:
        """The router and exactly these helpers (its status so far kept)."""
        with self._lock:
            self._tombstones.pop(router.id, None)
            held = self._routers.get(router.id)
            status = held.router if held is not None else router
            held = _Held(replace(router, status=status.status, status_reason=status.status_reason))
            self._routers[router.id] = held
            for helper in helpers:
                self._put(held, helper)
            self._changed(held)

    def upsert(self, helpers: Iterable[NeutronHelper]) -> set[str]:
        """Creates or replaces helpers by id; returns the routers changed. Helpers of routers
        this agent does not host are skipped (debug line)."""
        return self._each(helpers, self._put)

    def remove(self, helpers: Iterable[NeutronHelper]) -> set[str]:
        """Removes helpers by id; returns the routers changed."""
        return self._each(helpers, self._drop)

    def forget_router(self, router_id: str) -> str | None:
        """The router is gone from this agent: its table is removed by the next reconcile
        (a tombstone holds its namespace). Returns the namespace, None if it was unknown."""
        with self._lock:
            held = self._routers.pop(router_id, None)
            if held is None:
                return self._tombstones.get(router_id)
            self._tombstones[router_id] = held.router.namespace
            return held.router.namespace

    def knows(self, router_id: str) -> bool:
        with self._lock:
            return router_id in self._routers

    def router(self, router_id: str) -> Router | None:
        with self._lock:
            held = self._routers.get(router_id)
            return held.router if held is not None else None

    def status(self, router_id: str) -> tuple[Router, list[dict[str, Any]]] | None:
        """The router and its helpers (Neutron's fields with cthm's status and reason)."""
        with self._lock:
            held = self._routers.get(router_id)
            if held is None:
                return None
            helpers = []
            for helper_id, fields in sorted(held.helpers.items()):
                binding = held.bindings.get(helper_id)
                if binding is not None:
                    status, reason = binding.status, binding.status_reason
                else:
                    refused = held.refused[helper_id]
                    status, reason = refused.status, refused.reason
                helpers.append({**fields, "status": status.value, "reason": reason})
            return held.router, helpers

    def managed(self, router_id: str) -> list[HelperBinding]:
        """The router's bindings last reported ACTIVE (cthm's rules for them are verified)."""
        with self._lock:
            held = self._routers.get(router_id)
            if held is None or held.router.status is not Status.ACTIVE:
                return []
            return [b for b in held.bindings.values() if b.status is Status.ACTIVE]

    # --- DesiredStateSource ------------------------------------------------------------

    def load(self, router_id: str) -> DesiredRouter | None:
        with self._lock:
            held = self._routers.get(router_id)
            return self._desired(held) if held is not None else None

    def reload(self, router_id: str, last: DesiredRouter) -> DesiredRouter | None:
        with self._lock:
            held = self._routers.get(router_id)
            if held is None:
                return None
            if held.router.revision_number == last.router.revision_number and not held.refused:
                # Unchanged: the same tuple lets the reconciler reuse what it derived.
                return DesiredRouter(held.router, last.bindings)
            return self._desired(held)

    def load_all(self) -> dict[str, DesiredRouter | InvalidDesiredState]:
        with self._lock:
            return {router_id: self._desired(held) for router_id, held in self._routers.items()}

    def router_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._routers)

    def tombstones(self) -> dict[str, str]:
        with self._lock:
            return dict(self._tombstones)

    def clear_tombstone(self, router_id: str) -> None:
        with self._lock:
            self._tombstones.pop(router_id, None)

    def report(self, report: RouterReport) -> None:
        with self._lock:
            held = self._routers.get(report.router_id)
            if held is None:
                return
            if report.revision_number == held.router.revision_number:
                held.router = replace(
                    held.router,
                    status=report.status,
                    status_reason=validate_status_reason(report.reason),
                )
            for item in report.bindings:
                binding = held.bindings.get(item.binding_id)
                if binding is not None and binding.revision_number == item.revision_number:
                    held.bindings[item.binding_id] = replace(
                        binding, status=item.status, status_reason=item.reason
                    )
                    held.cached = None

    # --- inside ------------------------------------------------------------------------

    def _each(
        self, helpers: Iterable[NeutronHelper], change: Callable[[_Held, NeutronHelper], None]
    ) -> set[str]:
        changed: dict[str, _Held] = {}
        with self._lock:
            for helper in helpers:
                router_id = str(helper.router_id)
                held = self._routers.get(router_id)
                if held is None:
                    log.debug(
                        "conntrack helper %s: router %s is not hosted by this agent; skipped",
                        helper.id,
                        router_id,
                    )
                    continue
                change(held, helper)
                changed[router_id] = held
            for held in changed.values():
                self._changed(held)
        return set(changed)

    def _put(self, held: _Held, helper: NeutronHelper) -> None:
        helper_id = str(helper.id)
        held.bindings.pop(helper_id, None)
        held.refused.pop(helper_id, None)
        held.helpers[helper_id] = helper_fields(helper)
        revision = next(self._revisions)
        try:
            held.bindings[helper_id] = to_binding(self._catalog, held.router, helper, revision)
        except InvalidInput as exc:
            reason = f"refused: {exc.message}"
            log.warning(
                "router %s: conntrack helper %s (%s/%s %s) %s",
                held.router.id,
                helper_id,
                helper.protocol,
                helper.port,
                helper.helper,
                reason,
            )
            held.refused[helper_id] = BindingReport(
                helper_id, revision, Status.ERROR, validate_status_reason(reason)
            )

    def _drop(self, held: _Held, helper: NeutronHelper) -> None:
        helper_id = str(helper.id)
        held.bindings.pop(helper_id, None)
        held.refused.pop(helper_id, None)
        held.helpers.pop(helper_id, None)

    def _changed(self, held: _Held) -> None:
        held.cached = None
        held.router = replace(held.router, revision_number=next(self._revisions))

    @staticmethod
    def _desired(held: _Held) -> DesiredRouter:
        if held.cached is None:
            # By key, not HelperBinding's __lt__: a thousand comparisons of Python calls cost more.
            held.cached = tuple(sorted(held.bindings.values(), key=_order))
        return DesiredRouter(held.router, held.cached, tuple(held.refused.values()))


def _order(binding: HelperBinding) -> tuple[str, int, str]:
    return (binding.protocol.value, binding.port, binding.direction.value)
