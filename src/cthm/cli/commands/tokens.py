"""`cthm token ...`: create, list, show and revoke API tokens (admin only, through the API);
`cthm token recover`: a new admin token made locally, from the database (no token needed)."""

from __future__ import annotations

import getpass
import os
import re
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from cthm.cli import render
from cthm.cli.client import JSONObject
from cthm.cli.commands.serve import config_option, data_dir_option
from cthm.cli.context import CliState, json_option, pass_state
from cthm.cli.errors import Failure, ServiceError

ROLES = ("admin", "member", "reader", "agent")
TOKEN_COLUMNS = (
    ("id", "ID"),
    ("project_id", "Project"),
    ("roles", "Roles"),
    ("host", "Host"),
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
@click.option(
    "--host",
    default=None,
    help="Limit an agent token (--role agent only) to the node agent of this host.",
)
@json_option
@pass_state
def create(
    state: CliState,
    project_id: str,
    roles: tuple[str, ...],
    expires: str | None,
    description: str | None,
    host: str | None,
) -> None:
    """Create a token and print its secret (shown this once only).

    A node agent's token: --role agent --host NODE (it may then act only for NODE)."""
    unique = list(dict.fromkeys(roles))
    if host is not None and unique != ["agent"]:
        raise click.BadParameter(
            "only an agent token (--role agent alone) has a host", param_hint="--host"
        )
    with state.client() as client:
        token = client.create_token(
            project_id=project_id,
            roles=unique,
            expires_at=expires,
            description=description,
            host=host,
        )
    render.emit(state, {"auth_token": token}, _print_created, token)
    click.echo(SHOWN_ONCE, err=True)


def _print_created(token: JSONObject) -> None:
    render.print_object(_row({k: v for k, v in token.items() if k != "token"}))
    click.echo(f"token: {token.get('token')}")


@token_group.command("list")
@click.option("--project", "project_id", default=None, help="Only tokens of this project.")
@json_option
@pass_state
def list_(state: CliState, project_id: str | None) -> None:
    """List tokens (never their secrets)."""
    with state.client() as client:
        tokens = client.list_tokens(project_id=project_id)
    render.emit(
        state, {"auth_tokens": tokens}, render.print_rows, [_row(t) for t in tokens], TOKEN_COLUMNS
    )


@token_group.command("show")
@click.argument("token_id")
@json_option
@pass_state
def show(state: CliState, token_id: str) -> None:
    """Show the token with id TOKEN_ID (never its secret)."""
    with state.client() as client:
        token = client.get_token(token_id)
    render.emit(state, {"auth_token": token}, render.print_object, _row(token))


@token_group.command("revoke")
@click.argument("token_id")
@click.option(
    "--force",
    is_flag=True,
    help="Revoke even the last active admin token (or the one admin access lasts longest by).",
)
@json_option
@pass_state
def revoke(state: CliState, token_id: str, force: bool) -> None:
    """Revoke the token with id TOKEN_ID: it stops working at once.

    Revoking the admin token that admin access depends on (no other active admin token lasts
    as long) is refused unless --force."""
    with state.client() as client:
        client.revoke_token(token_id, force=force)
    render.emit(state, None, render.print_line, f"Revoked token {token_id}")


@token_group.command("recover")
@data_dir_option("The server's data directory. [env CTHM_DATA_DIR]")
@config_option("The server's TOML settings file, for its database. [env CTHM_CONFIG]")
@json_option
@pass_state
def recover(state: CliState, data_dir: Path | None, config_file: Path | None) -> None:
    """Make a new admin token on the server's host, without any token.

    For when no admin token works any more. Run it where the server's database is, as a user
    who may write it (root): that access is the authority. The secret goes to a new file
    admin-recovery-<time>.token (mode 0600) in the data directory and is never printed; the
    file's path is. Works whether the server runs or not; the event is audited
    (recover_auth_token).
    """
    # Imported here: the store stack is not needed by the client commands.
    from cthm.cli.commands.serve import _settings as load_settings_or_fail
    from cthm.cli.service import open_existing_store, recover_admin_token

    settings = load_settings_or_fail(config_file, data_dir=data_dir)
    caller = f"local user {_user()} (uid {os.getuid()}) on host {socket.gethostname()}"
    try:
        store = open_existing_store(settings)
        try:
            token, path = recover_admin_token(store, settings.data_dir, caller=caller)
        finally:
            store.close()
    except ServiceError as exc:
        raise Failure(exc.message) from None
    render.emit(
        state,
        {"auth_token": {"id": token.id, "project_id": token.project_id}, "file": str(path)},
        render.print_line,
        f"cthm wrote a new admin token (id {token.id}) to {path} (readable only by its "
        "owner); use it as --token or CTHM_TOKEN",
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry: the uid says it
        return "?"
