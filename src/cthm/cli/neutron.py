"""Adoption from Neutron (`cthm import neutron`): read a Neutron API's routers and conntrack
helpers through openstacksdk, plan what cthm lacks of them, and register it under the same ids.

Three steps, each on its own: `read_neutron` (the only code that speaks to Neutron), `make_plan`
(pure: Neutron's routers against cthm's), `apply_plan` (the only code that writes to cthm).
The import only ever adds: it never renames, moves or deletes anything cthm already has, so a
second run finds nothing to do. A router keeps Neutron's id, so its default namespace is
`qrouter-<id>`, the one Neutron's L3 agent made; a helper binds Neutron's way (ingress).

openstacksdk is imported only when reading: it is an optional dependency (`cthm[neutron]`) and
costs every other command a second of start-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cthm.cli.client import AuthenticationFailed, ClientError, CthmClient, one_line
from cthm.cli.errors import EXIT_FAILURE, EXIT_UNREACHABLE, EXIT_USAGE

NEUTRON_DIRECTION = "ingress"  # Neutron's conntrack helpers bind in PREROUTING
NAMESPACE_PREFIX = "qrouter-"


class NeutronError(Exception):
    """Neutron could not be read; `exit_code` follows the CLI's convention (2: the cloud's
    settings, 3: unreachable, 1: anything else, e.g. credentials refused)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True, order=True)
class NeutronHelper:
    protocol: str
    port: int
    helper: str

    def __str__(self) -> str:
        return f"{self.protocol}/{self.port} {self.helper}"


@dataclass(frozen=True)
class NeutronRouter:
    id: str
    name: str
    project_id: str
    helpers: tuple[NeutronHelper, ...]

    def __str__(self) -> str:
        return f"{self.id} ({one_line(self.name, 80)})" if self.name else self.id


# --- reading Neutron ---------------------------------------------------------------------------


def read_neutron(cloud: str, timeout: float) -> list[NeutronRouter]:
    """Every router Neutron shows the cloud's credentials (every project's for an admin) with
    its conntrack helpers. cloud: a name in clouds.yaml (found as the `openstack` command finds
    it: OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/, /etc/openstack/)."""
    try:
        from keystoneauth1 import exceptions as ksa
        from openstack import exceptions as sdk
        from openstack.config.loader import OpenStackConfig
        from openstack.connection import Connection
    except ImportError:
        raise NeutronError(
            "openstacksdk is not installed; install it with: pip install 'cthm[neutron]'",
            EXIT_USAGE,
        ) from None
    where = f"Neutron of cloud {cloud!r}"
    try:
        region = OpenStackConfig().get_one(cloud=cloud, api_timeout=timeout)
    except (sdk.ConfigException, ksa.ClientException) as exc:
        raise NeutronError(f"cloud {cloud!r}: {one_line(str(exc))}", EXIT_USAGE) from None
    connection = Connection(config=region)
    try:
        return [_router(connection, found) for found in connection.network.routers()]
    except ksa.Unauthorized:
        raise NeutronError(f"{where} refused the credentials (HTTP 401)") from None
    except ksa.ConnectionError as exc:  # refused, unknown host, TLS, timeout
        raise NeutronError(f"cannot reach {where}: {_reason(exc)}", EXIT_UNREACHABLE) from None
    except ksa.DiscoveryFailure as exc:
        # The version discovery says the same whether the endpoint is down or not Neutron.
        endpoint = region.get_endpoint("network")
        down = _connection_failure(connection, endpoint)
        if down is not None:
            message = f"cannot reach {where} at {endpoint}: {down}"
            raise NeutronError(message, EXIT_UNREACHABLE) from None
        raise NeutronError(f"{where}: {_reason(exc)}") from None
    except sdk.HttpException as exc:
        if exc.status_code == 401:
            raise NeutronError(f"{where} refused the credentials (HTTP 401)") from None
        raise NeutronError(f"{where}: {_reason(exc)}") from None
    except (sdk.SDKException, ksa.ClientException) as exc:  # e.g. no network endpoint
        raise NeutronError(f"{where}: {_reason(exc)}") from None
    finally:
        connection.close()


def _router(connection: Any, found: Any) -> NeutronRouter:
    helpers = (
        NeutronHelper(str(h.protocol).lower(), int(h.port), str(h.helper))
        for h in connection.network.conntrack_helpers(found.id)
    )
    return NeutronRouter(
        id=str(found.id),
        name=str(found.name or ""),
        project_id=str(found.project_id),
        helpers=tuple(sorted(helpers)),
    )


def _connection_failure(connection: Any, endpoint: str | None) -> str | None:
    """Why `endpoint` cannot be reached at all (None: it answers, or is not known here)."""
    from keystoneauth1 import exceptions as ksa

    if not endpoint:
        return None
    try:
        connection.session.get(endpoint, authenticated=False, raise_exc=False)
    except ksa.ConnectionError as exc:
        return _reason(exc)
    return None


_ERRNO = re.compile(r"\[Errno -?\d+\]\s*([^'\")]+)")


def _reason(exc: Exception) -> str:
    """One short line: keystoneauth's messages wrap the system's reason in urllib3's text."""
    text = one_line(str(exc))
    errno = _ERRNO.search(text)
    if errno is not None:
        return errno.group(1).strip()
    return one_line(text, 300) or exc.__class__.__name__


# --- planning ----------------------------------------------------------------------------------


class Action(StrEnum):
    CREATE_ROUTER = "create router"
    ADD_HELPER = "add helper"
    SKIP = "skip"  # cthm has it already
    CONFLICT = "conflict"  # cthm has something else in its place: left as is


@dataclass(frozen=True)
class Step:
    action: Action
    router: NeutronRouter
    helper: NeutronHelper | None = None
    why: str = ""

    def __str__(self) -> str:
        if self.action is Action.CREATE_ROUTER:
            return f"create router {self.router} in project {self.router.project_id}"
        if self.action is Action.ADD_HELPER:
            return f"add helper {self.helper} to router {self.router}"
        what = f"helper {self.helper} on router" if self.helper else "router"
        return f"{self.action} {what} {self.router}: {self.why}"


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]

    def count(self, action: Action) -> int:
        return sum(1 for step in self.steps if step.action is action)

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action in (Action.CREATE_ROUTER, Action.ADD_HELPER))

    def summary(self) -> str:
        routers, helpers = self.count(Action.CREATE_ROUTER), self.count(Action.ADD_HELPER)
        return (
            f"{_n(routers, 'router')} to create, {_n(helpers, 'helper')} to add, "
            f"{self.count(Action.SKIP)} already in cthm, "
            f"{_n(self.count(Action.CONFLICT), 'conflict')}"
        )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def make_plan(neutron: Iterable[NeutronRouter], cthm: Iterable[dict[str, Any]]) -> Plan:
    """What to do so that cthm has every Neutron router (same id) and helper; `cthm`: the routers
    as the cthm API lists them, with their conntrack_helpers. Neutron routers in name order."""
    by_id = {str(r["id"]): r for r in cthm}
    by_namespace = {str(r["namespace"]): r for r in by_id.values()}
    steps: list[Step] = []
    for router in sorted(neutron, key=lambda r: (r.name, r.id)):
        existing = by_id.get(router.id)
        if existing is None:
            owner = by_namespace.get(f"{NAMESPACE_PREFIX}{router.id}")
            if owner is not None:
                why = (
                    f"cthm router {owner['id']} already has namespace {NAMESPACE_PREFIX}{router.id}"
                )
                steps.append(Step(Action.CONFLICT, router, why=why))
                continue
            steps.append(Step(Action.CREATE_ROUTER, router))
            bound: dict[tuple[str, int], str] = {}
        else:
            why = "already in cthm"
            if existing.get("project_id") != router.project_id:
                why += f" (in project {existing.get('project_id')}, left there)"
            steps.append(Step(Action.SKIP, router, why=why))
            bound = {
                (str(b["protocol"]), int(b["port"])): str(b["helper"])
                for b in existing.get("conntrack_helpers", [])
                if b.get("direction", NEUTRON_DIRECTION) == NEUTRON_DIRECTION
            }
        for helper in router.helpers:
            steps.append(_helper_step(router, helper, bound))
    return Plan(tuple(steps))


def _helper_step(
    router: NeutronRouter, helper: NeutronHelper, bound: dict[tuple[str, int], str]
) -> Step:
    """`bound`: (protocol, port) -> helper of the router in cthm, with this plan's additions."""
    key = (helper.protocol, helper.port)
    there = bound.get(key)
    if there is None:
        bound[key] = helper.helper
        return Step(Action.ADD_HELPER, router, helper)
    if there == helper.helper:
        return Step(Action.SKIP, router, helper, "already in cthm")
    why = f"{helper.protocol}/{helper.port} is bound to {there} (a connection gets one helper)"
    return Step(Action.CONFLICT, router, helper, why)


# --- applying ----------------------------------------------------------------------------------


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"  # cthm refused it; `detail` says why
    NOT_DONE = "not done"  # not tried: its router could not be created


Report = Callable[[Step, Outcome, str], None]


def say_each(say: Callable[[str], None]) -> Report:
    """A Report that says one line per change: `done: add helper tcp/21 ftp to router ...`."""

    def report(step: Step, outcome: Outcome, detail: str) -> None:
        say(f"{outcome}: {step}" + (f": {detail}" if detail else ""))

    return report


def apply_plan(client: CthmClient, plan: Plan, report: Report) -> int:
    """Performs the plan's changes in order, reporting each; returns how many failed. A helper
    of a router whose creation failed is not tried. A token refused (401) or not allowed (403),
    or cthm unreachable: raised at once, every later step would fail alike; a second run
    resumes, the import being idempotent."""
    failed = 0
    broken: set[str] = set()  # routers whose creation failed
    for step in plan.changes:
        if step.router.id in broken:
            report(step, Outcome.NOT_DONE, "the router was not created")
            failed += 1
            continue
        try:
            _apply(client, step)
        except ClientError as exc:
            if isinstance(exc, AuthenticationFailed) or exc.status == 403:
                raise  # every later step would be refused alike
            report(step, Outcome.FAILED, exc.message)
            failed += 1
            if step.action is Action.CREATE_ROUTER:
                broken.add(step.router.id)
            continue
        report(step, Outcome.DONE, "")
    return failed


def _apply(client: CthmClient, step: Step) -> None:
    if step.action is Action.CREATE_ROUTER:
        client.create_router(
            name=step.router.name, project_id=step.router.project_id, router_id=step.router.id
        )
        return
    assert step.helper is not None  # an ADD_HELPER step has one
    client.create_helper(
        step.router.id,
        protocol=step.helper.protocol,
        port=step.helper.port,
        helper=step.helper.helper,
        direction=NEUTRON_DIRECTION,
    )


def step_body(step: Step) -> dict[str, Any]:
    """A step for --json: the action, the router, the helper (null for a router's step)."""
    router = step.router
    helper = step.helper
    return {
        "action": step.action.value,
        "router": {"id": router.id, "name": router.name, "project_id": router.project_id},
        "conntrack_helper": None
        if helper is None
        else {"protocol": helper.protocol, "port": helper.port, "helper": helper.helper},
        "reason": step.why,
    }
