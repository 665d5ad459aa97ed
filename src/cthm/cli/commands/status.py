"""`cthm status [ROUTER]`: desired state (from the API) beside kernel state.

The exit status makes it a monitoring check: 0 when everything shown is in sync (the router
ACTIVE, its kernel as desired, no binding shadowed), 1 when anything is out of sync, unknown or
in ERROR (and the usual 2 and 3 for bad usage and an unreachable server). Without ROUTER: one
line per router (hosts, status, in sync, last verified, reason) from the server's view (its
agents' last reads: GET /v2.0/routers/kernel_states, one request a thousand routers, no
conntrack read), narrowed by `--status` (router by router from a server without it).

Two views of the kernel, both shown: what the agents last read back (GET .../kernel_state:
when they last verified the table, their last error, drift repairs; one line per host placing
the router, from its `hosts`), and, when this host has the namespace (run on the router's host,
as root), the table read here, now. The rows and the verdict come from the read made now when
there is one (an agent's view may be up to one resync old); otherwise from the agents' view
(for a router on several hosts: what every one of them holds).

When the namespace is here, other software's `-j CT` rules in its raw tables are read too
(netfilter.foreign): a binding whose connections such a rule gets to first is named in a
warning line ("shadowed" in --json), since the kernel then gives them another helper or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.text import Text

from cthm.cli import render
from cthm.cli.client import ClientError, CthmClient, JSONObject
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.errors import EXIT_FAILURE, Failure
from cthm.cli.resolve import complete_router, resolve_router
from cthm.domain import Assignment, Direction, HelperCatalog, InvalidInput, Protocol
from cthm.netfilter import (
    KernelTable,
    LibraryUnavailable,
    NamespaceNotFound,
    NftError,
    Shadow,
    UnsafeValue,
    find_shadows_in,
    make_runner,
    read_cthm,
    read_usage,
)

Key = tuple[str, int, str]  # protocol, port, direction
# A server older than directions sends none: all its bindings are ingress.
DEFAULT_DIRECTION = Direction.INGRESS.value
NO_AGENT_PREFIX = "no agent in this process"


STATUSES = ("ACTIVE", "PENDING", "ERROR")


@click.command("status")
@click.argument("router", required=False, shell_complete=complete_router)
@click.option(
    "--status",
    "wanted",
    type=click.Choice(STATUSES, case_sensitive=False),
    default=None,
    help="Without ROUTER: only the routers in this status.",
)
@click.option(
    "--neutron",
    "neutron_router",
    metavar="ROUTER",
    default=None,
    help="A router of cthm's Neutron L3 agent extension on this host (by id): its state file "
    "beside the kernel now; no server is asked. Exit status 2: no state for it here.",
)
@click.option(
    "--state-path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --neutron: the extension's [cthm] state_path (default /var/lib/neutron/cthm).",
)
@json_option
@pass_state
def status(
    state: CliState,
    router: str | None,
    wanted: str | None,
    neutron_router: str | None = None,
    state_path: Path | None = None,
) -> int:
    """Show ROUTER's desired bindings beside what its namespace's kernel holds now; without
    ROUTER, every router in one table. Exit status 0: all in sync; 1: something is out of
    sync, unknown or in ERROR."""
    if neutron_router is not None or state_path is not None:
        if neutron_router is None or router is not None or wanted is not None:
            raise click.UsageError("--neutron ROUTER takes no other ROUTER or --status")
        from cthm.cli.commands.neutron_status import neutron_status  # the extension's files

        return neutron_status(state, neutron_router, state_path)
    if router is None:
        return _status_of_all(state, wanted.upper() if wanted else None)
    if wanted is not None:
        raise click.UsageError("--status is for the list of every router (no ROUTER)")
    with state.client() as client:
        body = resolve_router(client, router)
        bindings = client.list_helpers(body["id"])
        agent = _agent_view(client, body["id"])
    kernel, kernel_error = _read_kernel(body["namespace"], required=agent is None)
    report = compare(bindings, kernel, kernel_error)
    report["source"] = "local"
    report["shadowed"] = _shadowed(body["namespace"], bindings)
    if agent is not None and (kernel_error is not None and agent["in_sync"] is not None):
        # Nothing readable here, but the agent has looked: its view is the best there is.
        report.update(_from_agent(bindings, agent))
    report["agent"] = agent
    _add_usage(report, agent, body["namespace"], read_here=kernel is not None)
    report["router"] = {k: body.get(k) for k in ("id", "name", "namespace", "status")}
    report["router"]["status_reason"] = body.get("status_reason", "")
    render.emit(state, report, _print, report)
    return 0 if healthy(report) else EXIT_FAILURE


def _add_usage(
    report: dict[str, Any], agent: JSONObject | None, namespace: str, *, read_here: bool
) -> None:
    """Each desired row's live helper usage ({connections, expectations}, or None) and
    `usage_error`: as the server's agent read it now (embedded agent), else read here when the
    namespace is on this host (a node agent's router, run on its host); else unknown."""
    given: dict[Key, Any] = {}
    for row in (agent or {}).get("desired") or ():
        if isinstance(row, dict) and "usage" in row:
            given[_key(row)] = row["usage"]
    error = (agent or {}).get("usage_error")
    counts = None
    if not given and read_here and any(row["desired"] for row in report["bindings"]):
        try:
            counts = read_usage(namespace)
        except NftError as exc:
            error = str(exc)
    for row in report["bindings"]:
        usage = None
        if row["desired"] is not None:
            usage = given.get(_key(row))
            helper = _kernel_name(row["desired"], row["protocol"])
            if counts is not None and helper is not None:
                usage = counts.of(helper, row["protocol"], row["port"])
        row["usage"] = usage
    report["usage_error"] = error


def _kernel_name(helper: str, protocol: str) -> str | None:
    try:
        return HelperCatalog().resolve(helper, Protocol(protocol)).name
    except (InvalidInput, ValueError):
        return None


def healthy(report: dict[str, Any]) -> bool:
    """One router's report as a check: ACTIVE, its kernel in sync, nothing shadowed."""
    router = report.get("router") or {}
    return (
        router.get("status") == "ACTIVE"
        and report.get("in_sync") is True
        and not report.get("shadowed")
    )


# --- every router ------------------------------------------------------------------------------


def _status_of_all(state: CliState, wanted: str | None) -> int:
    """Every router (in `wanted` status), each with the server's view of its kernel."""
    with state.client() as client:
        try:
            # One request (a page of 1000 routers), no conntrack read on the server.
            views = client.kernel_states(status=wanted)
            rows = [_router_row(_as_router(view), _known(view)) for view in views]
        except ClientError as exc:
            if exc.status != 404:  # 404: a server without the listing: router by router
                raise
            routers = [
                r for r in client.list_routers() if wanted is None or r.get("status") == wanted
            ]
            rows = [_router_row(r, _agent_view(client, str(r["id"]))) for r in routers]
    rows.sort(key=lambda row: (row["name"] or "", row["id"]))
    report = {"in_sync": all(row["in_sync"] is True for row in rows), "routers": rows}
    render.emit(state, report, _print_all, rows)
    return 0 if all(_row_ok(row) for row in rows) else EXIT_FAILURE


def _as_router(view: JSONObject) -> JSONObject:
    """The router fields of a kernel_states item, as GET /v2.0/routers gives them."""
    hosts = [str(h.get("host")) for h in view.get("hosts") or () if isinstance(h, dict)]
    return {
        "id": view.get("router_id"),
        "name": view.get("name"),
        "namespace": view.get("namespace"),
        "hosts": hosts,
        "status": view.get("status"),
        "status_reason": view.get("status_reason"),
    }


def _router_row(router: JSONObject, agent: JSONObject | None) -> dict[str, Any]:
    """A router as one line: in_sync and last verified from its agents' view (None: no agent
    has looked, or none serves it)."""
    return {
        "id": router.get("id"),
        "name": router.get("name") or "",
        "namespace": router.get("namespace"),
        "hosts": list(router.get("hosts") or []),
        "status": router.get("status"),
        "in_sync": agent.get("in_sync") if agent is not None else None,
        "verified_at": agent.get("verified_at") if agent is not None else None,
        "reason": router.get("status_reason") or (agent or {}).get("last_error") or "",
    }


def _row_ok(row: dict[str, Any]) -> bool:
    return row["status"] == "ACTIVE" and row["in_sync"] is True


def _print_all(rows: list[dict[str, Any]]) -> None:
    table = render.make_table(
        None,
        (
            ("name", "Router"),
            ("id", "ID"),
            ("hosts", "Hosts"),
            ("status", "Status"),
            ("in_sync", "In sync"),
            ("verified_at", "Last verified"),
            ("reason", "Reason"),
        ),
    )
    verdicts = {
        True: Text("yes", style="green"),
        False: Text("NO", style="bold red"),
        None: Text("unknown", style="yellow"),
    }
    for row in rows:
        status_style = {"ACTIVE": "green", "ERROR": "bold red"}.get(str(row["status"]), "")
        table.add_row(
            Text(row["name"] or "-"),
            Text(str(row["id"])),
            Text(", ".join(row["hosts"]) or "-"),
            Text(str(row["status"]), style=status_style),
            verdicts.get(row["in_sync"], verdicts[None]),
            Text(row["verified_at"] or "never"),
            Text(row["reason"] or ""),
        )
    render.console().print(table)
    bad = sum(1 for row in rows if not _row_ok(row))
    render.print_line(
        f"{len(rows)} routers, all in sync"
        if not bad
        else f"{len(rows)} routers, {bad} not in sync"
    )


def _agent_view(client: CthmClient, router_id: str) -> JSONObject | None:
    """The server's agent view of the router; None without an agent (or an older server)."""
    try:
        view = client.kernel_state(router_id)
    except ClientError as exc:
        if exc.status == 404:  # a server without the endpoint: the router itself was found
            return None
        raise
    return _known(view)


def _known(view: JSONObject) -> JSONObject | None:
    """The view, or None when no agent serves the router (the server says it has none)."""
    if view.get("hosts"):  # node agents (or the server's own) report on it
        return view
    if view.get("in_sync") is None and str(view.get("last_error") or "").startswith(
        NO_AGENT_PREFIX
    ):
        return None
    return view


def _from_agent(bindings: list[dict[str, Any]], agent: JSONObject) -> dict[str, Any]:
    hosts = agent.get("hosts") or []
    if len(hosts) > 1:
        kernel = _common_kernel(bindings, hosts)
    else:
        actual = agent.get("actual") or []
        kernel = KernelTable(
            tuple(_assignment(a) for a in actual),
            frozenset(),
            tuple(agent.get("garbage") or ()),
        )
    report = compare(bindings, kernel, None)
    del report["kernel_error"]  # the note on why nothing was read here stays
    report["in_sync"] = agent["in_sync"]
    report["source"] = "agent"
    return report


def _assignment(item: dict[str, Any]) -> Assignment:
    return Assignment(
        Protocol(item["protocol"]),
        int(item["port"]),
        str(item["kernel_helper"]),
        Direction(item.get("direction", DEFAULT_DIRECTION)),
    )


def _common_kernel(bindings: list[dict[str, Any]], hosts: list[dict[str, Any]]) -> KernelTable:
    """A router on several hosts as one table: what EVERY host holds (each host's desired
    minus its missing plus its unexpected), and the garbage any host has. Which host lacks
    what is in the per-host lines."""
    desired = {_key_of(a): a.helper for a in _assignments(bindings)}
    common: dict[Key, str] | None = None
    garbage: list[str] = []
    for host in hosts:
        held: dict[Key, str] = {}
        if host.get("table_present"):
            held = dict(desired)
            for item in host.get("missing") or ():
                held.pop(_key_of(_assignment(item)), None)
            for item in host.get("unexpected") or ():
                unexpected = _assignment(item)
                held[_key_of(unexpected)] = unexpected.helper
        common = held if common is None else {k: v for k, v in common.items() if held.get(k) == v}
        garbage += [g for g in host.get("garbage") or () if g not in garbage]
    assignments = tuple(
        Assignment(Protocol(protocol), port, helper, Direction(direction))
        for (protocol, port, direction), helper in sorted((common or {}).items())
    )
    return KernelTable(assignments, frozenset(), tuple(garbage))


def _key_of(assignment: Assignment) -> Key:
    return (assignment.protocol.value, assignment.port, assignment.direction.value)


def _read_kernel(namespace: str, *, required: bool = True) -> tuple[KernelTable | None, str | None]:
    """The table read here, now, or why not. required: no other view exists, so a host that
    cannot read nftables at all is a failure rather than a note."""
    try:
        runner = make_runner("auto")
    except (LibraryUnavailable, OSError) as exc:
        if not required:
            return None, f"cannot read nftables on this host: {exc}"
        raise Failure(f"cannot read nftables on this host: {exc}") from exc
    try:
        # nftables' table, else cthm's iptables chains: the router may be on either backend.
        return read_cthm(namespace, runner), None
    except NamespaceNotFound:
        return None, f"namespace {namespace} not found on this host"
    except NftError as exc:
        return None, f"cannot read the kernel: {exc.message}"
    finally:
        runner.close()


def compare(
    bindings: list[dict[str, Any]], kernel: KernelTable | None, kernel_error: str | None
) -> dict[str, Any]:
    """Rows keyed by (protocol, port, direction): desired helper, binding status, kernel
    helper, match."""
    catalog = HelperCatalog()  # the full kernel catalog: only used to name aliases (h323 -> RAS)
    desired: dict[Key, dict[str, Any]] = {}
    for binding in bindings:
        key = (binding["protocol"], binding["port"], binding.get("direction", DEFAULT_DIRECTION))
        try:
            kernel_name = catalog.resolve(binding["helper"], Protocol(binding["protocol"])).name
        except (InvalidInput, ValueError):
            kernel_name = None
        desired[key] = {**binding, "kernel_helper": kernel_name}
    actual: dict[Key, str] = {}
    if kernel is not None:
        actual = {
            (a.protocol.value, a.port, a.direction.value): a.helper for a in kernel.assignments
        }
    rows = []
    for key in sorted(set(desired) | set(actual)):
        want = desired.get(key)
        have = actual.get(key)
        protocol, port, direction = key
        rows.append(
            {
                "protocol": protocol,
                "port": port,
                "direction": direction,
                "desired": want["helper"] if want else None,
                "binding_status": want["status"] if want else None,
                "kernel": have,
                "match": want is not None and want["kernel_helper"] == have,
            }
        )
    garbage = list(kernel.garbage) if kernel is not None else []
    in_sync = kernel_error is None and all(r["match"] for r in rows) and not garbage
    return {
        "in_sync": in_sync,
        "kernel_error": kernel_error,
        "kernel_table": kernel is not None,
        "garbage": garbage,
        "bindings": rows,
    }


def _print(report: dict[str, Any]) -> None:
    router = report["router"]
    verdict = {True: "in sync", False: "DIFFERS", None: "unknown"}[report["in_sync"]]
    seen = "as last read by the agent" if report["source"] == "agent" else "read here now"
    render.print_line(
        f"router {router['name'] or router['id']} ({router['id']}) in {router['namespace']}: "
        f"status {router['status']}; kernel {verdict} ({seen})"
    )
    if router.get("status_reason"):
        render.print_line(f"  reason: {router['status_reason']}")
    if report["kernel_error"]:
        render.print_line(f"  kernel: {report['kernel_error']}")
    agent = report.get("agent")
    if agent is not None:
        agent_verdict = {True: "in sync", False: "DIFFERS", None: "unknown"}[agent["in_sync"]]
        render.print_line(
            f"  agent: kernel {agent_verdict}; last verified {agent['verified_at'] or 'never'}; "
            f"drift repairs {agent['drift_repairs']}"
        )
        if agent.get("last_error"):
            render.print_line(f"  last error ({agent['last_error_at']}): {agent['last_error']}")
        for host in agent.get("hosts") or ():
            _print_host(host)
    table = render.make_table(
        None,
        (
            ("protocol", "Protocol"),
            ("port", "Port"),
            ("direction", "Direction"),
            ("desired", "Desired helper"),
            ("binding_status", "Binding status"),
            ("kernel", "Kernel helper"),
            ("match", "Match"),
            ("usage", "In use (conn/exp)"),
        ),
    )
    for row in report["bindings"]:
        usage = row.get("usage")
        table.add_row(
            Text(row["protocol"]),
            Text(str(row["port"])),
            Text(row["direction"]),
            Text(row["desired"] or "-"),
            Text(row["binding_status"] or "-"),
            Text(row["kernel"] or "-"),
            Text("yes", style="green") if row["match"] else Text("NO", style="bold red"),
            Text(f"{usage['connections']}/{usage['expectations']}" if usage else "-"),
        )
    render.console().print(table)
    if report.get("usage_error"):
        render.print_line(f"  usage unknown: {report['usage_error']}")
    for shadow in report.get("shadowed") or ():
        render.print_line(f"warning: {shadow['message']}")
    for item in report["garbage"]:
        render.print_line(f"  not ours in cthm's table: {item}")


def _print_host(host: dict[str, Any]) -> None:
    """One host placing the router: its agent, its last report and its kernel as last read."""
    verdict = {True: "in sync", False: "DIFFERS", None: "unknown"}[host.get("in_sync")]
    alive = "alive" if host.get("agent_alive") else "DEAD"
    revision = host.get("revision_number")
    reported = (
        f"{host.get('status')} at revision {revision}" if revision is not None else "no report"
    )
    render.print_line(
        f"  host {host.get('host')}: {reported}; agent {alive}; kernel {verdict}; "
        f"last verified {host.get('verified_at') or 'never'}; "
        f"drift repairs {host.get('drift_repairs') or 0}"
    )
    if host.get("status_reason"):
        render.print_line(f"    reason: {host['status_reason']}")
    if host.get("in_sync") is not None and not host.get("table_present"):
        render.print_line("    no cthm table in the namespace")
    for field in ("missing", "unexpected"):
        items = host.get(field) or ()
        if items:
            shown = ", ".join(
                f"{i.get('protocol')}/{i.get('port')} {i.get('direction', DEFAULT_DIRECTION)} "
                f"{i.get('kernel_helper')}"
                for i in items
            )
            render.print_line(f"    {field}: {shown}")
    for item in host.get("garbage") or ():
        render.print_line(f"    not ours in cthm's table: {item}")
    if host.get("last_error"):
        render.print_line(f"    last error ({host.get('last_error_at')}): {host['last_error']}")


# --- other software's -j CT rules --------------------------------------------------------------


def _shadowed(namespace: str, bindings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bindings whose connections another rule in this host's raw tables gets to first, as
    JSON rows with their warning text; empty when the namespace is not here or nothing can be
    read (tools missing). Each flavour's and family's raw table is judged on its own
    (netfilter.RawTable says by which precedence)."""
    assignments = _assignments(bindings)
    if not assignments:
        return []
    try:
        shadows = find_shadows_in(namespace, assignments)
    except (NftError, UnsafeValue, OSError):  # not on this host, or nothing readable
        return []
    desired = {_key(b): b["helper"] for b in bindings}
    rows = []
    for shadow in shadows:
        a = shadow.assignment
        rows.append(_shadow_row(shadow, desired[(a.protocol.value, a.port, a.direction.value)]))
    return rows


def _key(binding: dict[str, Any]) -> Key:
    return (binding["protocol"], binding["port"], binding.get("direction", DEFAULT_DIRECTION))


def _assignments(bindings: list[dict[str, Any]]) -> list[Assignment]:
    """The bindings as the kernel would hold them (kernel helper names)."""
    catalog = HelperCatalog()
    assignments = []
    for binding in bindings:
        try:
            protocol = Protocol(binding["protocol"])
            helper = catalog.resolve(binding["helper"], protocol).name
            direction = Direction(binding.get("direction", DEFAULT_DIRECTION))
        except (InvalidInput, ValueError):
            continue
        assignments.append(Assignment(protocol, int(binding["port"]), helper, direction))
    return assignments


def _shadow_row(shadow: Shadow, desired: str) -> dict[str, Any]:
    a, rule, families = shadow.assignment, shadow.rule, set(shadow.families)
    gives = f"helper {rule.helper}" if rule.helper is not None else "no helper at all"
    family = " (IPv6 only)" if families == {"IPv6"} else ""
    condition = (
        f" (if its other matches hold: {' '.join(rule.conditions)})" if rule.conditions else ""
    )
    message = (
        f"{a.protocol.value}/{a.port} ({a.direction.value}): rule `{rule.text}` in {rule.where}"
        f"{family} runs first{condition}: the kernel gives these connections {gives}, "
        f"not {desired}"
    )
    return {
        "protocol": a.protocol.value,
        "port": a.port,
        "direction": a.direction.value,
        "helper": desired,
        "rule": rule.text,
        "where": rule.where,
        "families": list(shadow.families),
        "foreign_helper": rule.helper,
        "conditions": list(rule.conditions),
        "effect": shadow.effect,
        "message": message,
    }
