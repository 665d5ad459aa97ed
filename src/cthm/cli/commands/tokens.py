"""`cthm token ...`: create, list, show and revoke API tokens (admin only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from cthm.cli import render
from cthm.cli.client import JSONObject
from cthm.cli.context import CliState, json_option, pass_state

ROLES = ("admin", "member", "reader", "agent")
TOKEN_COLUMNS = (
    ("id", "ID"),
    ("project_id", "Project"),
    ("roles", "Roles"),
    ("description", "Description"),
    ("created_at", "Created"),
    ("expires_at", "Expires"),
    ("revoked_at", "Revoked"),
)
SHOWN_ONCE = (
    "Warning: this is the only time the token is shown; store it now, it cannot be read again."
)

_DURATION = re.compile(r"([0-9]{1,6})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expires(value: str, now: datetime) -> str:
    """`--expires`: a duration from now (30d, 12h, 45m, 2w, 90s) or an ISO 8601 time with a
    timezone; returned as ISO 8601 in UTC."""
    duration = _DURATION.fullmatch(value.strip())
    if duration is not None:
        amount = int(duration.group(1))
        if amount == 0:
            raise click.BadParameter("must be a time in the future, not 0")
        expires = now + timedelta(**{_UNITS[duration.group(2)]: amount})
        return _iso(expires)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value[:40]!r} is neither a duration (30d, 12h, 45m) nor an ISO 8601 time"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise click.BadParameter("give the time's zone, e.g. 2030-01-01T00:00:00Z")
    if parsed <= now:
        raise click.BadParameter("must be a time in the future")
    return _iso(parsed)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _expires(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else parse_expires(value, datetime.now(UTC))


def _row(token: JSONObject) -> JSONObject:
    roles = token.get("roles")
    shown = ", ".join(str(r) for r in roles) if isinstance(roles, list) else roles
    return {**token, "roles": shown}


@click.group("token")
def token_group() -> None:
    """Manage API tokens (admin only)."""


@token_group.command("create")
@click.option("--project", "project_id", required=True, help="Project the token acts in.")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    type=click.Choice(ROLES),
    help="A role of the token (repeat for several).",
)
@click.option(
    "--expires",
    default=None,
    callback=_expires,
    help="When it stops working: 30d, 12h, 45m, or an ISO 8601 time. [default: never]",
)
@click.option("--description", default=None, help="What the token is for.")
@json_option
@pass_state
def create(
    state: CliState,
    project_id: str,
    roles: tuple[str, ...],
    expires: str | None,
    description: str | None,
) -> None:
    """Create a token and print its secret (shown this once only)."""
    with state.client() as client:
        token = client.create_token(
            project_id=project_id,
            roles=list(dict.fromkeys(roles)),
            expires_at=expires,
            description=description,
        )
    if state.json:
        render.print_json({"auth_token": token})
    else:
        render.print_object(_row({k: v for k, v in token.items() if k != "token"}))
        click.echo(f"token: {token.get('token')}")
    click.echo(SHOWN_ONCE, err=True)


@token_group.command("list")
@click.option("--project", "project_id", default=None, help="Only tokens of this project.")
@json_option
@pass_state
def list_(state: CliState, project_id: str | None) -> None:
    """List tokens (never their secrets)."""
    with state.client() as client:
        tokens = client.list_tokens(project_id=project_id)
    if state.json:
        render.print_json({"auth_tokens": tokens})
    else:
        render.print_rows([_row(t) for t in tokens], TOKEN_COLUMNS)


@token_group.command("show")
@click.argument("token_id")
@json_option
@pass_state
def show(state: CliState, token_id: str) -> None:
    """Show the token with id TOKEN_ID (never its secret)."""
    with state.client() as client:
        token = client.get_token(token_id)
    if state.json:
        render.print_json({"auth_token": token})
    else:
        render.print_object(_row(token))


@token_group.command("revoke")
@click.argument("token_id")
@json_option
@pass_state
def revoke(state: CliState, token_id: str) -> None:
    """Revoke the token with id TOKEN_ID: it stops working at once."""
    with state.client() as client:
        client.revoke_token(token_id)
    if not state.json:
        render.print_line(f"Revoked token {token_id}")
