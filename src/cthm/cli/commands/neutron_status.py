"""`cthm status --neutron ROUTER`: a router of cthm's Neutron L3 agent extension, on its host.

Neutron's API has no status for a conntrack helper: the extension writes each router's state
(status and reason, namespace, backend, helpers with their status, last verified time) to
`<state_path>/<router_id>.json` after every reconcile. This command prints it beside the table
read in the router's namespace now, and says whether the two agree.

Exit status: 0 the router is ACTIVE and its kernel in sync; 1 anything else (ERROR, out of
sync, not readable); 2 no state file for the router (this agent does not host it) or a bad id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cthm.cli import render
from cthm.cli.context import CliState
from cthm.cli.errors import EXIT_FAILURE, Failure, SettingsFailure
from cthm.domain import Assignment, Direction, InvalidInput, Protocol
from cthm.netfilter import (
    KernelTable,
    LibraryUnavailable,
    NamespaceNotFound,
    NftError,
    UnsafeValue,
    make_runner,
    read_cthm,
)

# Neutron's default state_path (/var/lib/neutron) + the extension's default `[cthm] state_path`.
DEFAULT_STATE_PATH = Path("/var/lib/neutron/cthm")


def neutron_status(state: CliState, router_id: str, state_path: Path | None) -> int:
    # Lazily: only this command reads the extension's files (state_file does not import neutron).
    from cthm.neutron.state_file import read_state

    where = state_path if state_path is not None else DEFAULT_STATE_PATH
    try:
        saved = read_state(where, router_id)
    except InvalidInput as exc:
        raise SettingsFailure(f"router {router_id!r:.60}: {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise Failure(f"cannot read the state of router {router_id} in {where}: {exc}") from exc
    if saved is None:
        raise SettingsFailure(
            f"router {router_id} is unknown here: no state file in {where} (is this the host "
            "of its L3 agent, and --state-path the extension's [cthm] state_path?)"
        )
    report = dict(saved)
    report["kernel"] = _kernel(saved)
    report["in_sync"] = report["kernel"]["in_sync"]
    render.emit(state, report, _print, report)
    return 0 if report.get("status") == "ACTIVE" and report["in_sync"] is True else EXIT_FAILURE


def _kernel(saved: dict[str, Any]) -> dict[str, Any]:
    """The table in the router's namespace now, compared with what the extension applied."""
    namespace = str(saved.get("namespace") or "")
    view: dict[str, Any] = {"in_sync": False, "present": None, "actual": None, "error": None}
    try:
        desired = sorted(_assignment(row) for row in saved.get("desired") or [])
    except (KeyError, TypeError, ValueError) as exc:
        view["error"] = f"the state file's desired table is unreadable: {exc}"
        return view
    table, error = _read(namespace)
    if error is not None:
        view["error"] = error
        return view
    view["present"] = table is not None
    actual = sorted(table.assignments) if table is not None else []
    view["actual"] = [_row(a) for a in actual]
    problems = []
    if table is None:
        problems.append("no cthm table or chains in the namespace")
    else:
        if table.garbage:
            problems.append("unexpected content: " + "; ".join(table.garbage[:3]))
        if table.owner != saved.get("owner"):
            problems.append(f"marked {table.owner!r}, not {saved.get('owner')!r}")
        missing = [a for a in desired if a not in actual]
        extra = [a for a in actual if a not in desired]
        if missing:
            problems.append("missing " + ", ".join(_shown(a) for a in missing[:5]))
        if extra:
            problems.append("not applied by the extension: " + ", ".join(_shown(a) for a in extra))
    view["in_sync"] = not problems
    view["error"] = "; ".join(problems) or None
    return view


def _read(namespace: str) -> tuple[KernelTable | None, str | None]:
    try:
        runner = make_runner("auto")
    except (LibraryUnavailable, OSError) as exc:
        return None, f"cannot read nftables on this host: {exc}"
    try:
        return read_cthm(namespace, runner), None
    except NamespaceNotFound:
        return None, f"namespace {namespace} not found on this host"
    except UnsafeValue as exc:
        return None, f"namespace {namespace!r:.80} refused: {exc}"
    except NftError as exc:
        return None, f"cannot read the kernel: {exc.message}"
    finally:
        runner.close()


def _assignment(row: dict[str, Any]) -> Assignment:
    return Assignment(
        Protocol(row["protocol"]), int(row["port"]), str(row["helper"]), Direction(row["direction"])
    )


def _row(assignment: Assignment) -> dict[str, Any]:
    return {
        "protocol": assignment.protocol.value,
        "port": assignment.port,
        "helper": assignment.helper,
        "direction": assignment.direction.value,
    }


def _shown(assignment: Assignment) -> str:
    return f"{assignment.protocol.value}/{assignment.port} {assignment.helper}"


def _print(report: dict[str, Any]) -> None:
    kernel = report["kernel"]
    name = f" ({report['name']})" if report.get("name") else ""
    render.print_line(
        f"router {report.get('router_id')}{name}: {report.get('status')}"
        + (f": {report['reason']}" if report.get("reason") else "")
    )
    render.print_line(
        f"namespace {report.get('namespace')}, backend {report.get('backend')}, "
        f"owner {report.get('owner')}, last verified {report.get('verified_at') or 'never'}"
    )
    verdict = "in sync" if kernel["in_sync"] else f"NOT in sync: {kernel['error']}"
    render.print_line(f"kernel now: {verdict}")
    helpers = report.get("helpers") or []
    render.print_line(f"helpers ({len(helpers)}):")
    for helper in helpers:
        reason = f"  {helper['reason']}" if helper.get("reason") else ""
        render.print_line(
            f"  {helper.get('protocol')}/{helper.get('port')} {helper.get('helper')}  "
            f"{helper.get('status')}  {helper.get('id')}{reason}"
        )
