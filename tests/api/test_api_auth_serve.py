"""Token lifecycle against a real `cthm serve` over HTTP, and what the server lets out: no token
secret in its output, in any answer but the one that created it, or in its database.

Each failing client connects from its own loopback address (127.0.0.0/8 is all local), so the
server counts its failures apart and no test waits for another's slow-down.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cthm.testing.service import ServerProcess

BAD = "cthm_" + "Z" * 43
UNAUTHORIZED_BODY = {
    "NeutronError": {"type": "HTTPUnauthorized", "message": "Authentication required", "detail": ""}
}


def client(server: ServerProcess, source: str, token: str | None = None) -> httpx.Client:
    """A client of `server` connecting from loopback address `source`."""
    return httpx.Client(
        base_url=server.url,
        timeout=10.0,
        headers={"X-Auth-Token": token} if token else {},
        transport=httpx.HTTPTransport(local_address=source),
        trust_env=False,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("auth-serve")
    process = ServerProcess(base / "data", base / "logs", env={"CTHM_LOG_LEVEL": "DEBUG"})
    with process:
        yield process


def create_token(server: ServerProcess, **fields: object) -> dict[str, str]:
    with client(server, "127.0.0.1", server.admin_token) as admin:
        response = admin.post("/v2.0/auth_tokens", json={"auth_token": fields})
    assert response.status_code == 201, response.text
    token: dict[str, str] = response.json()["auth_token"]
    return token


def expire_in_database(server: ServerProcess, token_id: str) -> None:
    """Moves a token's expiry into the past, as time would (the API refuses a past expiry)."""
    past = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(server.data_dir / "cthm.db") as db:
        changed = db.execute(
            "UPDATE auth_tokens SET expires_at = ? WHERE id = ?", (past, token_id)
        ).rowcount
    assert changed == 1


def test_token_lifecycle_over_http(server: ServerProcess) -> None:
    member = create_token(server, project_id="p1", roles=["member"])
    revoked = create_token(server, project_id="p1", roles=["admin"])
    expired = create_token(server, project_id="p1", roles=["admin"])
    with client(server, "127.0.0.1", server.admin_token) as admin:
        assert admin.delete(f"/v2.0/auth_tokens/{revoked['id']}").status_code == 204
        router = admin.post("/v2.0/routers", json={"router": {"name": "r", "project_id": "p1"}})
        assert router.status_code == 201
    expire_in_database(server, expired["id"])

    # The exempt documents need no token.
    with client(server, "127.0.0.2") as anonymous:
        for path in ("/", "/v2.0", "/v2.0/", "/healthz"):
            assert anonymous.get(path).status_code == 200, path

    # A token made through the API works, sent either way.
    for headers in (
        {"X-Auth-Token": member["token"]},
        {"Authorization": f"Bearer {member['token']}"},
    ):
        with client(server, "127.0.0.3") as user:
            listed = user.get("/v2.0/routers", headers=headers)
        assert listed.status_code == 200
        assert [r["project_id"] for r in listed.json()["routers"]] == ["p1"]

    # A member cannot manage tokens.
    with client(server, "127.0.0.3", member["token"]) as user:
        for method, url in (("GET", "/v2.0/auth_tokens"), ("POST", "/v2.0/auth_tokens")):
            body = {"auth_token": {"project_id": "p1", "roles": ["admin"]}}
            response = user.request(method, url, json=body if method == "POST" else None)
            assert response.status_code == 403, (method, response.text)

    # Every failure: one answer.
    causes = {
        "missing": {},
        "wrong": {"X-Auth-Token": BAD},
        "malformed header": {"Authorization": f"Token {member['token']}"},
        "truncated": {"X-Auth-Token": member["token"][:-1]},
        "expired": {"X-Auth-Token": expired["token"]},
        "revoked": {"X-Auth-Token": revoked["token"]},
    }
    answers = set()
    for number, (cause, headers) in enumerate(causes.items(), start=10):
        with client(server, f"127.0.0.{number}") as anonymous:
            response = anonymous.get("/v2.0/routers", headers=headers)
        assert response.status_code == 401, cause
        assert response.json() == UNAUTHORIZED_BODY, cause
        answers.add((response.content, response.headers["WWW-Authenticate"]))
    assert len(answers) == 1, answers

    # The server's log says why, with the token's id when it exists, never the token.
    stderr = server.stderr
    assert f"127.0.0.14: an expired token (token id {expired['id']})" in stderr
    assert f"127.0.0.15: a revoked token (token id {revoked['id']})" in stderr
    assert "127.0.0.11: an unknown token" in stderr
    assert "127.0.0.10: no token" in stderr


def test_repeated_failures_from_one_client_are_slowed_down(server: ServerProcess) -> None:
    with client(server, "127.0.0.200", BAD) as attacker:
        for _ in range(8):
            assert attacker.get("/v2.0/routers").status_code == 401
    # The server's own decision, as it logs it at every power of two: the 6th, 7th and 8th
    # failures waited 0.1, 0.2 and 0.4 s.
    assert (
        "authentication failed from 127.0.0.200: an unknown token; 8 failures in a row, "
        "answers delayed 0.40s"
    ) in server.stderr
    # Another client is not slowed: its first failure costs nothing (logged as a plain one).
    with client(server, "127.0.0.201", BAD) as other:
        assert other.get("/v2.0/routers").status_code == 401
    assert "authentication failed from 127.0.0.201: an unknown token\n" in server.stderr


def test_no_secret_leaks_into_logs_answers_or_the_database(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path / "data", tmp_path / "logs", env={"CTHM_LOG_LEVEL": "DEBUG"}
    ) as server:
        admin_secret = server.admin_token
        created = [
            create_token(server, project_id="p1", roles=["member"], description="valid"),
            create_token(server, project_id="p1", roles=["admin"], description="to revoke"),
            create_token(server, project_id="p1", roles=["reader"], description="to expire"),
        ]
        secrets = [admin_secret, *(t["token"] for t in created)]
        _, revoked, expired = created
        answers: list[httpx.Response] = []
        with client(server, "127.0.0.1", admin_secret) as admin:
            answers.append(admin.delete(f"/v2.0/auth_tokens/{revoked['id']}"))
            answers.append(admin.get("/v2.0/auth_tokens"))
            answers += [admin.get(f"/v2.0/auth_tokens/{t['id']}") for t in created]
            answers.append(
                admin.post("/v2.0/routers", json={"router": {"name": "r", "project_id": "p1"}})
            )
        expire_in_database(server, expired["id"])
        attempts: list[dict[str, str]] = []
        for secret in secrets:
            attempts += [
                {"X-Auth-Token": secret},
                {"Authorization": f"Bearer {secret}"},
                {"X-Auth-Token": secret[:-1] + "!"},  # malformed
                {"X-Auth-Token": secret[:16]},
                {"Authorization": f"Basic {secret}"},
                {"X-Auth-Token": secret, "Authorization": f"Bearer {BAD}"},
            ]
        for number, headers in enumerate(attempts, start=2):
            with client(server, f"127.0.1.{number}") as caller:
                answers.append(caller.get("/v2.0/routers", headers=headers))
                answers.append(caller.post("/v2.0/routers", headers=headers, json={"x": 1}))
                answers.append(caller.get("/v2.0/nowhere", headers=headers))
                answers.append(caller.get("/openapi.json", headers=headers))
        statuses = {r.status_code for r in answers}
        assert {200, 201, 204, 400, 401, 404} <= statuses, statuses
        assert server.stop() == 0
        output = server.stdout + server.stderr

    assert "authentication failed" in output  # the failures were logged, and the secrets not:
    for secret in secrets:
        for text, where in [(output, "server output")] + [
            (str(r.headers) + r.text, f"{r.request.method} {r.request.url}") for r in answers
        ]:
            assert secret[:16] not in text, where
    assert not re.search(r"cthm_[A-Za-z0-9_-]{11}", output)

    dump = "\n".join(sqlite3.connect(tmp_path / "data" / "cthm.db").iterdump())
    for secret in secrets:
        assert secret[:16] not in dump
        assert hashlib.sha256(secret.encode()).hexdigest() in dump
