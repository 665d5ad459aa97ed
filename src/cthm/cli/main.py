"""The `cthm` command: the group, its global options, and the one-line error policy."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from cthm.cli.client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    AuthenticationFailed,
    ClientError,
    ServerUnreachable,
    one_line,
)
from cthm.cli.commands.agents import agent_group
from cthm.cli.commands.audit import audit_group
from cthm.cli.commands.catalog import catalog
from cthm.cli.commands.db import db_group
from cthm.cli.commands.helpers import helper_group
from cthm.cli.commands.import_neutron import import_group
from cthm.cli.commands.routers import router_group
from cthm.cli.commands.serve import serve
from cthm.cli.commands.status import status
from cthm.cli.commands.tokens import token_group
from cthm.cli.context import CliState, validate_token, validate_url
from cthm.cli.errors import EXIT_FAILURE, Failure, UnreachableFailure


class CthmGroup(click.Group):
    """Turns client errors into one-line failures with their exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ServerUnreachable as exc:
            raise UnreachableFailure(exc.message) from None
        except AuthenticationFailed:
            raise Failure("authentication failed (check --token / CTHM_TOKEN)") from None
        except ClientError as exc:
            raise Failure(_with_role(exc)) from None


_POLICY_MESSAGE = re.compile(r"rule:([a-z_:]+) is disallowed by policy")


def _with_role(exc: ClientError) -> str:
    """A 403's message with the role the action needs, when the API names only the rule (its
    message is Neutron's, kept as is for Neutron's clients)."""
    found = _POLICY_MESSAGE.fullmatch(exc.message) if exc.status == 403 else None
    if found is None:
        return exc.message
    # Imported only here: the API's modules cost client commands a noticeable start-up time.
    from cthm.api.policy import POLICY

    rule = POLICY.get(found.group(1))
    return exc.message if rule is None else f"{exc.message} (needs: {rule.value})"


@click.group(cls=CthmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="CTHM_URL",
    default=DEFAULT_URL,
    show_default=True,
    callback=validate_url,
    help="Base URL of the cthm API. [env CTHM_URL]",
)
@click.option(
    "--timeout",
    envvar="CTHM_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the API. [env CTHM_TIMEOUT]",
)
@click.option(
    "--token",
    envvar="CTHM_TOKEN",
    default=None,
    callback=validate_token,
    help="API token. [env CTHM_TOKEN; for a loopback URL, default: admin.token in the data "
    "directory (CTHM_DATA_DIR)]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The server's data directory: where a local server's admin.token is read, and the "
    "default of every command's --data-dir. [env CTHM_DATA_DIR]",
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON bodies (for scripts).")
@click.version_option(package_name="cthm", prog_name="cthm")
@click.pass_context
def cli(
    ctx: click.Context,
    url: str,
    timeout: float,
    token: str | None,
    data_dir: Path | None,
    json_output: bool,
) -> None:
    """cthm assigns Linux conntrack helpers to virtual routers (network namespaces).

    Exit status: 0 ok, 1 the request failed (or, with --wait, the binding is in ERROR), 2 bad
    input found before any request (usage, settings, no token), 3 the server cannot be
    reached, 4 --wait timed out.

    Shell completion (commands, options, router names): eval "$(_CTHM_COMPLETE=bash_source
    cthm)" in ~/.bashrc (zsh_source, fish_source for the other shells).
    """
    state = ctx.ensure_object(CliState)
    state.url, state.timeout, state.json = url, timeout, json_output
    state.token = token
    if data_dir is not None:
        state.data_dir = data_dir
        # The same directory for the server-side commands (serve, db, token recover), which
        # read CTHM_DATA_DIR when their own --data-dir is not given.
        os.environ["CTHM_DATA_DIR"] = str(data_dir)


cli.add_command(serve)
cli.add_command(router_group)
cli.add_command(helper_group)
cli.add_command(catalog)
cli.add_command(status)
cli.add_command(token_group)
cli.add_command(audit_group)
cli.add_command(agent_group)
cli.add_command(db_group)
cli.add_command(import_group)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: every failure is one `Error: ...` line on stderr, never a traceback."""
    try:
        status = cli.main(args=argv, prog_name="cthm", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        status = exc.exit_code
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _fail(exc.format_message() + hint, exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("interrupted", 130)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(EXIT_FAILURE)
    except Exception as exc:  # the last line of defence against a traceback
        if os.environ.get("CTHM_DEBUG"):
            raise
        _fail(
            f"internal error ({exc.__class__.__name__}: {exc}); CTHM_DEBUG=1 shows more",
            EXIT_FAILURE,
        )
    sys.exit(status if isinstance(status, int) else 0)


def _fail(message: str, exit_code: int) -> None:
    click.echo(f"Error: {one_line(message)}", err=True)
    sys.exit(exit_code)


def _quiet_stdout() -> None:
    # The reader went away (`cthm router list | head`): later flushes must not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
