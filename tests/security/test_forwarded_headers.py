"""X-Forwarded-For is believed only from proxies the operator names.

Before the fix the server believed it from 127.0.0.1 (uvicorn's default), so a client rotating
the header with bad tokens looked like a new client each time: never slowed down, and every
attempt a new audit row. Now the client is the TCP peer unless `--forwarded-allow-ips` names
the proxy; a client's failures in a window are one audit event with a count.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.testing.service import CTHM, TOKEN_HEADER, ServerProcess, clean_env

BAD_TOKEN = "cthm_" + "B" * 43
ATTEMPTS = 9  # 5 free failures, then delays of 0.1, 0.2, 0.4, 0.8 s
FLUSH_WAIT = 10.0  # the count is rewritten every 2 s while failures go on


def client(server: ServerProcess, source: str, token: str | None = None) -> httpx.Client:
    headers = {TOKEN_HEADER: token} if token else {}
    return httpx.Client(
        base_url=server.url,
        headers=headers,
        timeout=10.0,
        transport=httpx.HTTPTransport(local_address=source),
    )


def failed_authentications(server: ServerProcess) -> list[dict[str, Any]]:
    with client(server, "127.0.0.1", server.admin_token) as admin:
        response = admin.get("/v2.0/audit_events", params={"action": "authenticate"})
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["audit_events"]
    return events


def counted(server: ServerProcess, total: int) -> list[dict[str, Any]]:
    """The 401 events once their counts add up to `total` (bounded wait)."""
    deadline = time.monotonic() + FLUSH_WAIT
    events = failed_authentications(server)
    while sum(e["after"]["failures"] for e in events) < total and time.monotonic() < deadline:
        time.sleep(0.25)
        events = failed_authentications(server)
    return events


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path / "data", tmp_path / "logs") as running:
        yield running


def test_a_rotating_forwarded_for_is_ignored_throttled_and_counted_once(
    server: ServerProcess,
) -> None:
    waits = []
    with client(server, "127.0.0.1", BAD_TOKEN) as attacker:
        for number in range(ATTEMPTS):
            forged = {"X-Forwarded-For": f"203.0.113.{number + 1}"}
            started = time.monotonic()
            assert attacker.get("/v2.0/routers", headers=forged).status_code == 401
            waits.append(time.monotonic() - started)
    # Throttled as one client: the 8th and 9th waited 0.4 and 0.8 s (before: never).
    assert waits[-1] >= 0.7, waits
    assert waits[-2] >= 0.35, waits

    events = counted(server, ATTEMPTS)
    assert len(events) == 1, events  # before: one row per attempt
    (event,) = events
    assert event["after"]["client"] == "127.0.0.1"
    assert event["after"]["failures"] == ATTEMPTS
    assert (event["status_code"], event["outcome"]) == (401, "denied")
    assert f"{ATTEMPTS} failures from 127.0.0.1" in event["detail"]
    assert "203.0.113." not in server.stderr


def test_named_proxies_are_believed_and_no_one_else(tmp_path: Path) -> None:
    args = ("--forwarded-allow-ips", "127.0.0.1")
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as server:
        with client(server, "127.0.0.1", BAD_TOKEN) as proxy:
            for _ in range(3):
                behind = {"X-Forwarded-For": "203.0.113.7"}
                assert proxy.get("/v2.0/routers", headers=behind).status_code == 401
            other = {"X-Forwarded-For": "198.51.100.8, 203.0.113.8"}
            assert proxy.get("/v2.0/routers", headers=other).status_code == 401
        # Not a named proxy: its header is a client's claim, and ignored.
        with client(server, "127.0.0.2", BAD_TOKEN) as stranger:
            forged = {"X-Forwarded-For": "203.0.113.9"}
            assert stranger.get("/v2.0/routers", headers=forged).status_code == 401

        events = counted(server, 5)
        by_client = {e["after"]["client"]: e["after"]["failures"] for e in events}
        assert by_client == {"203.0.113.7": 3, "203.0.113.8": 1, "127.0.0.2": 1}, events
        assert "authentication failed from 203.0.113.7" in server.stderr


@pytest.mark.parametrize("value", ["*", "proxy.example", "127.0.0.1,nonsense"])
def test_proxies_must_be_addresses(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        [str(CTHM), "serve", "--data-dir", str(tmp_path), "--forwarded-allow-ips", value],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 2, result
    assert "forwarded_allow_ips" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
