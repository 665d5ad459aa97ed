"""`cthm token ...`, where the CLI finds its token, and the first admin token `cthm serve` makes."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cthm_cli_harness import Result, ServerProcess, assert_error, free_port, run

from cthm.cli.context import local_admin_token
from cthm.cli.service import Service
from cthm.settings import load_settings

Cthm = Callable[..., Result]
SECRET = re.compile(r"cthm_[A-Za-z0-9_-]{43}")
AUTH_FAILED = "Error: authentication failed (check --token / CTHM_TOKEN)"
SHOWN_ONCE = (
    "Warning: this is the only time the token is shown; store it now, it cannot be read again."
)


def created_secret(result: Result) -> str:
    assert result.returncode == 0, result
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("token: ")]
    secret = line.removeprefix("token: ")
    assert SECRET.fullmatch(secret), secret
    assert result.stderr.splitlines() == [SHOWN_ONCE]
    assert result.stdout.count(secret) == 1
    return secret


def token_count(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "cthm.db") as db:
        (count,) = db.execute("SELECT count(*) FROM auth_tokens").fetchone()
    return int(count)


def test_create_prints_the_secret_once_and_the_token_works(
    cthm: Cthm, server: ServerProcess, project: str
) -> None:
    created = cthm(
        "token", "create", "--project", project, "--role", "member", "--role", "reader",
        "--expires", "30d", "--description", "ci deploys",
    )  # fmt: skip
    secret = created_secret(created)
    assert run("router", "list", "--project", project, url=server.url, token=secret).returncode == 0

    as_json = cthm("--json", "token", "create", "--project", project, "--role", "reader")
    assert as_json.stderr.splitlines() == [SHOWN_ONCE]
    body = as_json.json()["auth_token"]
    assert SECRET.fullmatch(body["token"])
    assert body["roles"] == ["reader"]
    assert body["expires_at"] is None

    listed = cthm("--json", "token", "list", "--project", project).json()["auth_tokens"]
    assert sorted(t["roles"] for t in listed) == [["member", "reader"], ["reader"]]
    first = next(t for t in listed if t["description"] == "ci deploys")
    expires = datetime.fromisoformat(first["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) <= timedelta(days=30)
    table = cthm("token", "list", "--project", project)
    assert first["id"] in table.stdout
    assert "member, reader" in table.stdout
    assert secret not in table.stdout + cthm("token", "show", first["id"]).stdout


def test_revoke_stops_a_token_at_once(cthm: Cthm, server: ServerProcess, project: str) -> None:
    body = cthm("--json", "token", "create", "--project", project, "--role", "member").json()
    token_id, secret = body["auth_token"]["id"], body["auth_token"]["token"]
    assert run("router", "list", url=server.url, token=secret).returncode == 0

    revoked = cthm("token", "revoke", token_id)
    assert revoked.returncode == 0, revoked
    assert revoked.stdout.strip() == f"Revoked token {token_id}"
    line = assert_error(run("router", "list", url=server.url, token=secret), 1)
    assert line == AUTH_FAILED
    shown = cthm("--json", "token", "show", token_id).json()["auth_token"]
    assert shown["revoked_at"] is not None
    assert_error(cthm("token", "revoke", "not-a-token-id"), 1, "could not be found")


def test_a_missing_or_wrong_token_is_one_clear_line(server: ServerProcess, tmp_path: Path) -> None:
    nowhere = {"CTHM_DATA_DIR": str(tmp_path)}  # no admin.token to fall back on
    # No token at all: said before any request, naming where the CLI looked (a usage error).
    missing = assert_error(run("router", "list", url=server.url, env=nowhere), 2)
    assert missing == (
        f"Error: {tmp_path}/admin.token not found; set CTHM_DATA_DIR, --data-dir or --token"
    )
    for args, token in (
        (("catalog",), "cthm_" + "x" * 43),
        (("token", "list"), "not-even-a-cthm-token"),
    ):
        line = assert_error(run(*args, url=server.url, env=nowhere, token=token), 1)
        assert line == AUTH_FAILED
    assert_error(run("--token", "cthm_" + "y" * 43, "catalog", url=server.url, env=nowhere), 1)


def test_a_token_that_cannot_be_a_header_is_a_usage_error_that_does_not_show_it(
    server: ServerProcess,
) -> None:
    for token in ("cthm_with space", "cthm_line\nbreak", "cthm_ünïcode"):
        line = assert_error(run("router", "list", url=server.url, token=token), 2, "--token")
        assert "cthm_" not in line
        assert "is not a token" in line


def test_a_local_cli_uses_the_servers_admin_token_file(server: ServerProcess) -> None:
    local = {"CTHM_DATA_DIR": str(server.data_dir)}
    assert run("router", "list", url=server.url, env=local).returncode == 0
    by_name = f"http://localhost:{server.port}"
    assert run("router", "list", url=by_name, env=local).returncode == 0
    # An explicit token wins over the file.
    assert_error(run("router", "list", url=server.url, env=local, token="cthm_" + "w" * 43), 1)


def test_the_admin_token_file_is_never_read_for_a_remote_server(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTHM_DATA_DIR", str(server.data_dir))
    assert local_admin_token(server.url) == server.admin_token
    assert local_admin_token(f"http://[::1]:{server.port}") == server.admin_token
    for remote in ("http://198.18.0.1:9797", "https://cthm.example:9797", "http://10.0.0.1"):
        assert local_admin_token(remote) is None, remote


@pytest.mark.parametrize("role", ["member", "reader", "agent"])
def test_only_admins_manage_tokens_from_the_cli(
    cthm: Cthm, server: ServerProcess, project: str, role: str
) -> None:
    secret = created_secret(cthm("token", "create", "--project", project, "--role", role))
    for args in (
        ("token", "list"),
        ("token", "create", "--project", project, "--role", "admin"),
    ):
        assert_error(run(*args, url=server.url, token=secret), 1, "disallowed by policy")


@pytest.mark.parametrize(
    ("expires", "fragment"),
    [
        ("tomorrow", "neither a duration"),
        ("0d", "in the future"),
        ("12x", "neither a duration"),
        ("2001-01-01T00:00:00Z", "in the future"),
        ("2099-01-01T00:00:00", "zone"),
    ],
)
def test_bad_expiry_is_a_usage_error(cthm: Cthm, project: str, expires: str, fragment: str) -> None:
    result = cthm("token", "create", "--project", project, "--role", "reader", "--expires", expires)
    assert_error(result, 2, "--expires", fragment)


def test_roles_are_checked_before_asking(cthm: Cthm, project: str) -> None:
    assert_error(cthm("token", "create", "--project", project, "--role", "root"), 2, "--role")
    assert_error(cthm("token", "create", "--project", project), 2, "--role")


# --- the first admin token ---------------------------------------------------------------------


def test_the_first_start_writes_one_private_admin_token_and_says_where(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    path = data_dir / "admin.token"
    with ServerProcess(data_dir, tmp_path / "logs") as first:
        mode = os.stat(path).st_mode
        assert stat.S_ISREG(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert os.stat(path).st_uid == os.getuid()
        content = path.read_text()
        assert SECRET.fullmatch(content.strip())
        assert content.endswith("\n")
        assert first.stdout.splitlines()[0].startswith(
            f"cthm created the first admin token: it is in {path} "
        )
        assert content.strip() not in first.stdout + first.stderr
        assert run("router", "list", url=first.url, token=first.admin_token).returncode == 0
        assert first.stop() == 0
    assert token_count(data_dir) == 1
    written = os.stat(path)

    with ServerProcess(data_dir, tmp_path / "logs") as second:
        assert "admin token" not in second.stdout
        assert run("router", "list", url=second.url, token=content.strip()).returncode == 0
        assert second.stop() == 0
    assert token_count(data_dir) == 1
    assert path.read_text() == content
    assert os.stat(path).st_mtime_ns == written.st_mtime_ns


@pytest.mark.parametrize("planted", ["file", "dangling link", "link to a file"])
def test_an_admin_token_file_is_never_overwritten(tmp_path: Path, planted: str) -> None:
    """A file there while the database has no token: serve refuses, and touches nothing."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / "admin.token"
    target = tmp_path / "elsewhere"
    if planted == "file":
        path.write_text("keep me\n")
    elif planted == "dangling link":
        path.symlink_to(target)
    else:
        target.write_text("keep me too\n")
        path.symlink_to(target)
    result = run("serve", "--data-dir", str(data_dir), "--port", str(free_port()))
    assert_error(result, 1, str(path), "refusing to overwrite")
    if planted == "file":
        assert path.read_text() == "keep me\n"
    elif planted == "dangling link":
        assert not target.exists()
    else:
        assert target.read_text() == "keep me too\n"
    assert token_count(data_dir) == 0  # nothing half-made either


def test_the_admin_token_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    said: list[str] = []
    previous = os.umask(0)
    try:
        with Service(load_settings(data_dir=tmp_path, agent_enabled=False), say=said.append) as s:
            path = s.admin_token_file  # made by start()
            assert s.bootstrap() is None  # once only
    finally:
        os.umask(previous)
    assert path == tmp_path / "admin.token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert said == [
        f"cthm created the first admin token: it is in {path} (readable only by its owner); "
        "use it as --token or CTHM_TOKEN"
    ]
