"""What every client command shares: the server URL, the timeout and the output mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import httpx

from cthm.cli.client import DEFAULT_TIMEOUT, DEFAULT_URL, CthmClient

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(slots=True)
class CliState:
    url: str = DEFAULT_URL
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False

    def client(self) -> CthmClient:
        return CthmClient(self.url, self.timeout)


pass_state = click.make_pass_decorator(CliState, ensure=True)


def validate_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{value!r} is not an http(s)://HOST[:PORT] URL")
    return value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(CliState).json = True


def json_option(function: F) -> F:
    """`--json` on a command, the same switch as the group's `cthm --json`."""
    option = click.option(
        "--json",
        "json_output",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        help="Print the JSON body of the answer (for scripts).",
    )
    return option(function)
