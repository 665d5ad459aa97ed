"""No secret in any log line, even at DEBUG, wherever a client puts it.

Before the fix, `cthm serve` at DEBUG printed the access log as requests came: a token sent in
the query string or in a path was written to the server's output in full.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from cthm.testing.service import TOKEN_HEADER, ServerProcess

PASSWORD = "hunter2-not-a-token"


def test_tokens_in_paths_and_query_strings_never_reach_the_log(tmp_path: Path) -> None:
    args = ("--log-level", "debug")
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as server:
        secret = server.admin_token
        with httpx.Client(base_url=server.url, timeout=10.0) as anonymous:
            sent = [
                anonymous.get("/v2.0/routers", params={"token": secret}),
                anonymous.get("/v2.0/routers", params={"X-Auth-Token": secret}),
                anonymous.get(f"/v2.0/routers/{secret}"),
                anonymous.get("/v2.0/routers", params={"password": PASSWORD, "limit": "1"}),
            ]
        with httpx.Client(
            base_url=server.url, timeout=10.0, headers={TOKEN_HEADER: secret}
        ) as admin:
            sent += [
                admin.get("/v2.0/routers", params={"auth_token": secret, "fields": "id"}),
                admin.get(f"/v2.0/routers/{secret}/conntrack_helpers"),
                admin.get("/v2.0/audit_events", params={"api_key": secret}),
            ]
        assert [r.status_code for r in sent][:4] == [401] * 4
        server.stop()

    output = server.stdout + server.stderr
    # The access log is on (DEBUG) and shows the requests, masked.
    assert "GET /v2.0/routers?token=[redacted]" in output, output[-3000:]
    assert "GET /v2.0/routers/cthm_[redacted]/conntrack_helpers" in output
    assert "fields=id" in output  # what is not a secret stays readable
    for leaked in (secret, secret[5:], secret[5:25], PASSWORD):
        assert leaked not in output
