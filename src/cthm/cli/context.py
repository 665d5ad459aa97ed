"""What every client command shares: the server URL, the token, the timeout and the output mode.

The token is `--token`, else CTHM_TOKEN, else, when the server is on this machine (a loopback
URL), the admin token `cthm serve` wrote into its data directory (`cthm --data-dir`,
CTHM_DATA_DIR or the default), if this user may read it. Without one, no request is sent: the
command fails saying where it looked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from cthm.cli.client import DEFAULT_TIMEOUT, DEFAULT_URL, CthmClient
from cthm.cli.errors import SettingsFailure

F = TypeVar("F", bound=Callable[..., Any])

ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name)
API_PREFIX = "/v2.0"
TOKEN_MAX = 512


@dataclass(slots=True)
class CliState:
    url: str = DEFAULT_URL
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False
    token: str | None = None
    data_dir: Path | None = None  # `cthm --data-dir`; None: CTHM_DATA_DIR or the default

    def client(self) -> CthmClient:
        """A client with the token; without one, a SettingsFailure naming where the token was
        looked for, and no request sent (it could only be refused)."""
        token = self.token if self.token is not None else self.local_token()
        return CthmClient(self.url, self.timeout, token=token)

    def local_token(self) -> str:
        if not is_loopback_url(self.url):
            raise SettingsFailure(
                f"no token: set --token or CTHM_TOKEN (the admin token file of the data "
                f"directory is used only for a loopback URL, not {self.url})"
            )
        path = data_dir(self.data_dir) / ADMIN_TOKEN_FILE
        token, problem = read_token_file(path)
        if token is None:
            raise SettingsFailure(f"{path} {problem}; set CTHM_DATA_DIR, --data-dir or --token")
        return token


pass_state = click.make_pass_decorator(CliState, ensure=True)


def validate_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise click.BadParameter(f"{value!r} is not an http(s)://HOST[:PORT] URL")
    # The API's own base (as in a service catalog): the client adds /v2.0 to every path.
    trimmed = value.rstrip("/")
    return trimmed.removesuffix(API_PREFIX) if trimmed.endswith(API_PREFIX) else value


def clean_token(value: str) -> str | None:
    """The token in `value` (surrounding whitespace dropped), or None if it cannot be one: a
    token is one header value, printable ASCII without spaces."""
    token = value.strip()
    if not token or len(token) > TOKEN_MAX or not all(33 <= ord(c) < 127 for c in token):
        return None
    return token


def validate_token(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    token = clean_token(value)
    if token is None:  # said without showing the value: it is a secret
        raise click.BadParameter("is not a token (printable ASCII without spaces)")
    return token


def is_loopback_url(url: str) -> bool:
    host = httpx.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def data_dir(given: Path | None = None) -> Path:
    """`given` (cthm --data-dir), else CTHM_DATA_DIR, else the default data directory."""
    if given is not None:
        return given
    from cthm.settings import default_data_dir

    configured = os.environ.get("CTHM_DATA_DIR")
    return Path(configured) if configured else default_data_dir()


def local_admin_token(url: str, directory: Path | None = None) -> str | None:
    """The admin token of a local `cthm serve`, if the URL is loopback and the file readable.
    Never sent anywhere but to loopback: the file is this machine's admin credential."""
    if not is_loopback_url(url):
        return None
    return read_token_file(data_dir(directory) / ADMIN_TOKEN_FILE)[0]


def read_token_file(path: Path) -> tuple[str | None, str]:
    """(the token in the file, "") or (None, why not: for a message naming the file)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None, "not found"
    except PermissionError:
        return None, "is not readable by this user"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({exc.__class__.__name__})"
    token = clean_token(text)
    return (token, "") if token is not None else (None, "holds no token")


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
