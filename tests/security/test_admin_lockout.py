"""Nobody locks the admins out by accident, and root on the server's host can always get back in.

Revoking the admin token that admin access depends on (no other active admin token lasts as
long) is a 409 unless forced, also when two such revocations race; `cthm token recover` makes a
new admin token from the database of a running server, without any token, and audits it.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from cthm.domain import LastAdminToken, Role
from cthm.store import Store
from cthm.testing.service import CTHM, ServerProcess, clean_env

ROUNDS = 6  # races of two revocations; each round leaves one admin token for the next
WARNING_DAYS = 3
T = TypeVar("T")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # Tokens only: the agent is not needed, and 2 cores are shared.
    with ServerProcess(
        tmp_path / "data", tmp_path / "logs", env={"CTHM_AGENT_ENABLED": "false"}
    ) as process:
        yield process


def http(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, timeout=30.0, headers={"X-Auth-Token": token}, trust_env=False
    )


def create_admin(server: ServerProcess, token: str, **fields: Any) -> dict[str, Any]:
    body = {"project_id": "admin", "roles": ["admin"], **fields}
    with http(server, token) as client:
        response = client.post("/v2.0/auth_tokens", json={"auth_token": body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()["auth_token"]
    return created


def bootstrap_id(server: ServerProcess) -> str:
    with http(server, server.admin_token) as client:
        tokens = client.get("/v2.0/auth_tokens").json()["auth_tokens"]
    assert len(tokens) == 1
    token_id: str = tokens[0]["id"]
    return token_id


def works(server: ServerProcess, token: str) -> bool:
    with http(server, token) as client:
        status = client.get("/v2.0/routers").status_code
    assert status in (200, 401)
    return status == 200


def cthm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTHM), *args], capture_output=True, text=True, timeout=60, env=clean_env(), check=False
    )


def recover(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cthm(*args, "token", "recover", "--data-dir", str(data_dir))


def race(*calls: Callable[[], T]) -> list[T]:
    """Runs the calls in threads released at the same moment; their results, in order."""
    barrier = threading.Barrier(len(calls), timeout=30)
    results: dict[int, T] = {}

    def run(index: int, call: Callable[[], T]) -> None:
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=item) for item in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == len(calls), "a racer failed or hung"
    return [results[index] for index in range(len(calls))]


def status_of_revoke(client: httpx.Client, token_id: str) -> int:
    return client.delete(f"/v2.0/auth_tokens/{token_id}").status_code


def revoke_in(store: Store, token_id: str) -> str:
    try:
        with store.unit_of_work() as repo:
            repo.tokens.revoke(token_id, datetime.now(UTC))
    except LastAdminToken:
        return "refused"
    return "revoked"


def test_the_last_admin_token_cannot_be_revoked_and_keeps_working(server: ServerProcess) -> None:
    admin_id = bootstrap_id(server)
    # A member token of the same project is no admin: it does not count.
    with http(server, server.admin_token) as client:
        member = client.post(
            "/v2.0/auth_tokens",
            json={"auth_token": {"project_id": "admin", "roles": ["member"]}},
        )
        assert member.status_code == 201
        refused = client.delete(f"/v2.0/auth_tokens/{admin_id}")
        assert refused.status_code == 409, refused.text
        error = refused.json()["NeutronError"]
        assert error["type"] == "LastAdminToken"
        assert f"Auth token {admin_id} is the last active admin token" in error["message"]
        assert "force" in error["message"]
        assert "cthm token recover" in error["message"]
        shown = client.get(f"/v2.0/auth_tokens/{admin_id}").json()["auth_token"]
        assert shown["revoked_at"] is None
        assert client.delete(f"/v2.0/auth_tokens/{admin_id}?force=maybe").status_code == 400
        assert client.delete(f"/v2.0/auth_tokens/{admin_id}?other=1").status_code == 400
    assert works(server, server.admin_token)

    # The CLI says the same in one line, and --force overrides it.
    revoke = ("--url", server.url, "--token", server.admin_token, "token", "revoke", admin_id)
    refused_cli = cthm(*revoke)
    assert refused_cli.returncode == 1, refused_cli
    assert refused_cli.stderr.startswith(f"Error: Auth token {admin_id} is the last active admin")
    assert len(refused_cli.stderr.splitlines()) == 1
    assert works(server, server.admin_token)
    forced = cthm(*revoke, "--force")
    assert forced.returncode == 0, forced
    assert not works(server, server.admin_token)


def test_the_admin_token_without_expiry_cannot_go_while_the_others_expire(
    server: ServerProcess,
) -> None:
    admin_id = bootstrap_id(server)
    soon = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    expiring = create_admin(server, server.admin_token, expires_at=soon)
    with http(server, server.admin_token) as client:
        refused = client.delete(f"/v2.0/auth_tokens/{admin_id}")
        assert refused.status_code == 409, refused.text
        message = refused.json()["NeutronError"]["message"]
        assert "never expires" in message
        assert "admin access ends at" in message
        # The expiring one may go: the one that never expires stays.
        assert client.delete(f"/v2.0/auth_tokens/{expiring['id']}").status_code == 204
    # A second admin token without expiry makes the first one free to go.
    lasting = create_admin(server, server.admin_token)
    with http(server, lasting["token"]) as client:
        assert client.delete(f"/v2.0/auth_tokens/{admin_id}").status_code == 204
    assert not works(server, server.admin_token)
    assert works(server, lasting["token"])


def test_concurrent_revocations_of_the_last_two_admin_tokens_leave_one(
    server: ServerProcess,
) -> None:
    survivor = {"id": bootstrap_id(server), "token": server.admin_token}
    for _ in range(ROUNDS):
        other = create_admin(server, survivor["token"])
        pair = (survivor, other)
        with http(server, survivor["token"]) as first, http(server, other["token"]) as second:
            # Each revokes the other's token, at the same moment.
            statuses = race(
                partial(status_of_revoke, first, other["id"]),
                partial(status_of_revoke, second, survivor["id"]),
            )
        # The loser is refused (409), or no longer authenticated (401) if the winner was first.
        assert sorted(statuses) in ([204, 401], [204, 409]), statuses
        alive = [t for t in pair if works(server, t["token"])]
        assert len(alive) == 1, statuses
        survivor = alive[0]


def test_concurrent_revocations_in_the_store_leave_one(tmp_path: Path) -> None:
    """The same race with nothing between the two transactions but the database: two writers
    on one SQLite file, started together."""
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    try:
        store.migrate()
        with store.unit_of_work() as repo:
            repo.tokens.create(project_id="admin", roles=[Role.ADMIN])
        for _ in range(ROUNDS):
            with store.unit_of_work() as repo:
                admins = repo.tokens.active_admins(datetime.now(UTC))
                for token in admins[1:]:
                    repo.tokens.revoke(token.id, datetime.now(UTC))
                created, _ = repo.tokens.create(project_id="admin", roles=[Role.ADMIN])
                pair = (admins[0].id, created.id)
            outcomes = race(*(partial(revoke_in, store, token_id) for token_id in pair))
            assert sorted(outcomes) == ["refused", "revoked"], outcomes
            with store.unit_of_work(write=False) as repo:
                assert len(repo.tokens.active_admins(datetime.now(UTC))) == 1
    finally:
        store.close()


def test_forced_revocation_then_local_recovery_against_the_running_server(
    server: ServerProcess,
) -> None:
    admin_id = bootstrap_id(server)
    with http(server, server.admin_token) as client:
        assert client.delete(f"/v2.0/auth_tokens/{admin_id}?force=true").status_code == 204
    assert not works(server, server.admin_token)  # locked out, as asked

    before = set(os.listdir(server.data_dir))
    result = recover(server.data_dir)
    assert result.returncode == 0, result
    new_files = set(os.listdir(server.data_dir)) - before
    assert len(new_files) == 1, new_files
    path = server.data_dir / new_files.pop()
    assert path.name.startswith("admin-recovery-")
    assert path.name.endswith(".token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text(encoding="ascii").strip()
    assert secret.startswith("cthm_")
    assert secret not in result.stdout + result.stderr  # the path is printed, never the secret
    assert str(path) in result.stdout
    assert (server.data_dir / "admin.token").read_text().strip() == server.admin_token

    # The running server takes it at once.
    assert works(server, secret)
    with http(server, secret) as client:
        events = client.get("/v2.0/audit_events", params={"action": "recover_auth_token"})
        assert events.status_code == 200, events.text
        (event,) = events.json()["audit_events"]
        forced = client.get(
            "/v2.0/audit_events", params={"action": "delete_auth_token", "target_id": admin_id}
        ).json()["audit_events"]
    assert event["outcome"] == "success"
    assert event["token_id"] is None
    assert "local recovery by local user" in event["detail"]
    assert f"uid {os.getuid()}" in event["detail"]
    assert str(path) in event["detail"]
    assert secret not in str(event)
    assert [e["detail"] for e in forced] == ["forced"]

    # A second recovery never overwrites the first file.
    again = recover(server.data_dir)
    assert again.returncode == 0, again
    assert path.read_text(encoding="ascii").strip() == secret
    assert len([p for p in os.listdir(server.data_dir) if p.startswith("admin-recovery-")]) == 2


def test_recovery_needs_an_existing_database(tmp_path: Path) -> None:
    result = recover(tmp_path / "nothing-here")
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no database at ")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "nothing-here").exists()  # created nothing


def test_serve_warns_when_every_admin_token_expires_soon(server: ServerProcess) -> None:
    admin_id = bootstrap_id(server)
    soon = (datetime.now(UTC) + timedelta(days=WARNING_DAYS)).isoformat()
    expiring = create_admin(server, server.admin_token, expires_at=soon)
    with http(server, expiring["token"]) as client:
        refused = client.delete(f"/v2.0/auth_tokens/{admin_id}")
        assert refused.status_code == 409
        assert client.delete(f"/v2.0/auth_tokens/{admin_id}?force=true").status_code == 204
    server.stop()
    server.start()
    assert "WARNING" in server.stderr
    assert "admin access ends at" in server.stderr
    assert "cthm token recover --data-dir" in server.stderr
