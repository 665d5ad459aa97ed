"""`cthm audit list` through the real command against a real `cthm serve`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cthm_cli_harness import Result, ServerProcess, assert_error

Cthm = Callable[..., Result]
WRONG_TOKEN = "cthm_" + "W" * 43
AUDIT_LOGGER = " INFO cthm.audit: "


def _audit(cthm: Cthm, *args: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = cthm("audit", "list", *args, "--json").json()["audit_events"]
    return events


def test_audit_list_shows_changes_and_denials(
    cthm: Cthm, project: str, server: ServerProcess
) -> None:
    started = datetime.now().astimezone() - timedelta(seconds=1)
    router = cthm("router", "create", f"r-{project}", "--project", project, "--json").json()[
        "router"
    ]
    binding = cthm(
        "helper", "create", router["id"], "--protocol", "udp", "--port", "69",
        "--helper", "tftp", "--json",
    ).json()["conntrack_helper"]  # fmt: skip
    refused = cthm("router", "show", router["id"], env={"CTHM_TOKEN": WRONG_TOKEN})
    assert_error(refused, 1)

    mine = _audit(cthm, "--since", started.isoformat())
    created = [e for e in mine if e["target_id"] == router["id"]]
    assert [(e["action"], e["outcome"]) for e in created] == [("create_router", "success")]
    assert created[0]["after"]["project_id"] == project
    assert created[0]["token_id"], "the admin token's id (never the token)"
    helper_events = [e for e in mine if e["target_id"] == binding["id"]]
    assert [e["action"] for e in helper_events] == ["create_router_conntrack_helper"]
    assert helper_events[0]["after"]["port"] == 69
    assert [e["time"] for e in mine] == sorted(e["time"] for e in mine)

    denied = _audit(cthm, "--outcome", "denied", "--since", started.isoformat())
    assert any(
        e["action"] == "authenticate" and e["status_code"] == 401 and router["id"] in e["detail"]
        for e in denied
    ), denied
    assert all(e["outcome"] == "denied" for e in denied)
    assert WRONG_TOKEN not in str(denied)

    by_action = _audit(
        cthm, "--action", "create_router_conntrack_helper", "--target-id", binding["id"]
    )
    assert [e["id"] for e in by_action] == [helper_events[0]["id"]]

    latest = _audit(cthm, "--limit", "2")
    everything = _audit(cthm)
    assert [e["id"] for e in latest] == [e["id"] for e in everything[-2:]]

    table = cthm("audit", "list", "--target-id", router["id"])
    assert table.returncode == 0, table
    (line,) = [line for line in table.stdout.splitlines() if router["id"] in line]
    assert "create_router" in line
    assert "success" in line

    # The server logged each event as one JSON line, the same as the row, and no secret.
    logged = [
        json.loads(line.split(AUDIT_LOGGER, 1)[1])
        for line in server.stderr.splitlines()
        if AUDIT_LOGGER in line
    ]
    by_id = {e["id"]: e for e in logged}
    for event in [*created, *helper_events, *denied]:
        assert by_id[event["id"]] == event
    assert server.admin_token not in server.stderr
    assert WRONG_TOKEN not in server.stderr


def test_audit_list_refuses_bad_input_and_non_admins(cthm: Cthm, project: str) -> None:
    assert_error(cthm("audit", "list", "--since", "yesterday"), 2, "--since", "ISO 8601")
    assert_error(cthm("audit", "list", "--outcome", "maybe"), 2, "--outcome")
    assert_error(cthm("audit", "list", env={"CTHM_TOKEN": WRONG_TOKEN}), 1, "authentication")

    created = cthm("token", "create", "--project", project, "--role", "reader", "--json").json()
    reader = created["auth_token"]
    assert_error(cthm("audit", "list", env={"CTHM_TOKEN": reader["token"]}), 1, "audit_events")

    (minted,) = _audit(cthm, "--action", "create_auth_token", "--target-id", reader["id"])
    assert minted["after"]["project_id"] == project
    assert reader["token"] not in str(minted)
    (refused,) = _audit(cthm, "--outcome", "denied", "--token-id", reader["id"])
    assert (refused["action"], refused["status_code"]) == ("get_audit_events", 403)
