"""`cthm audit list`: the audit trail (admins only): every change and every denied attempt."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from cthm.cli import render
from cthm.cli.context import CliState, json_option, pass_state

AUDIT_COLUMNS = (
    ("time", "Time"),
    ("outcome", "Outcome"),
    ("status_code", "Status"),
    ("action", "Action"),
    ("target_type", "Target type"),
    ("target_id", "Target"),
    ("target_project_id", "Target project"),
    ("project_id", "Caller project"),
    ("token_id", "Token id"),
    ("request_id", "Request id"),
)

OUTCOMES = ("success", "denied", "failed")


def _timestamp(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An ISO 8601 time, checked here so a typo is a usage error rather than a server 400."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
    return parsed.isoformat()


@click.group("audit")
def audit_group() -> None:
    """Read the audit trail (admin only): every change and every denied attempt."""


@audit_group.command("list")
@click.option("--action", default=None, help="Only this action (e.g. create_router).")
@click.option("--outcome", type=click.Choice(OUTCOMES), default=None, help="Only this outcome.")
@click.option("--target-type", default=None, help="Only targets of this type (router, ...).")
@click.option("--target-id", default=None, help="Only this target.")
@click.option("--project", "project_id", default=None, help="Only callers of this project.")
@click.option("--token-id", default=None, help="Only this caller's token id.")
@click.option("--request-id", default=None, help="Only this request.")
@click.option(
    "--since", default=None, callback=_timestamp, help="Only at or after this ISO 8601 time."
)
@click.option("--until", default=None, callback=_timestamp, help="Only before this ISO 8601 time.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Only the N most recent events. [default: all]",
)
@json_option
@pass_state
def list_(
    state: CliState,
    action: str | None,
    outcome: str | None,
    target_type: str | None,
    target_id: str | None,
    project_id: str | None,
    token_id: str | None,
    request_id: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
) -> None:
    """List audit events, oldest first."""
    filters = {
        "action": action,
        "outcome": outcome,
        "target_type": target_type,
        "target_id": target_id,
        "project_id": project_id,
        "token_id": token_id,
        "request_id": request_id,
    }
    with state.client() as client:
        events = client.list_audit_events(
            filters={k: v for k, v in filters.items() if v is not None},
            since=since,
            until=until,
            limit=limit,
        )
    render.emit(state, {"audit_events": events}, render.print_rows, events, AUDIT_COLUMNS)
