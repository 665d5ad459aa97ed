"""The audit trail through the real API, with real tokens: every change and every denied attempt.

Events are read back through GET /v2.0/audit_events (as an admin) and, for the atomicity checks,
the database is made to refuse audit rows with a trigger written by hand (sqlite3 / psycopg).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cthm.domain import ListQuery
from support.store import allow_audit_inserts, refuse_audit_inserts

from .support import JSON, Api, error_of, helpers_url

REQUEST_ID = "X-Openstack-Request-Id"
WRONG_TOKEN = "cthm_" + "W" * 43


def app_state(api: Api) -> Any:
    """The FastAPI app's state (the TestClient types its app as any ASGI callable)."""
    return api.client.app.state  # type: ignore[attr-defined]


def token_id_of(api: Api, secret: str | None) -> str:
    assert secret is not None
    with api.store.unit_of_work(write=False) as repo:
        token = repo.tokens.lookup(secret)
    assert token is not None
    return token.id


def secret_of(api: Api) -> str:
    assert api.token is not None
    return api.token


def events(api: Api, **params: Any) -> list[JSON]:
    """Every audit event matching `params`, read as the admin."""
    response = api.get("/v2.0/audit_events", params=params)
    assert response.status_code == 200, response.text
    found: list[JSON] = response.json()["audit_events"]
    return found


def events_of(api: Api, response: httpx.Response) -> list[JSON]:
    return events(api, request_id=response.headers[REQUEST_ID])


def only_event_of(api: Api, response: httpx.Response) -> JSON:
    found = events_of(api, response)
    assert len(found) == 1, found
    return found[0]


def router_values(body: JSON) -> JSON:
    keys = ("id", "name", "project_id", "namespace", "revision_number")
    return {k: body[k] for k in keys}


def binding_values(body: JSON) -> JSON:
    keys: tuple[str, ...] = ("id", "router_id", "project_id", "protocol", "port", "helper")
    keys += ("direction", "revision_number")
    return {k: body[k] for k in keys}


@pytest.fixture
def member(api: Api) -> Api:
    return api.as_token(api.issue_token("p1", ["member"]))


@pytest.fixture
def outsider(api: Api) -> Api:
    """A member of another project, probing p1's objects."""
    return api.as_token(api.issue_token("p2", ["member"]))


# --- every change: exactly one success row -----------------------------------------------------


def test_every_change_is_recorded_once_with_caller_and_values(api: Api, member: Api) -> None:
    admin_id = token_id_of(api, api.admin_token)
    member_secret = secret_of(member)
    member_id = token_id_of(api, member_secret)

    created = api.post("/v2.0/routers", json={"router": {"name": "edge", "project_id": "p1"}})
    assert created.status_code == 201
    router = created.json()["router"]
    event = only_event_of(api, created)
    assert event["action"] == "create_router"
    assert (event["token_id"], event["project_id"]) == (admin_id, "admin")
    assert (event["target_type"], event["target_id"]) == ("router", router["id"])
    assert event["target_project_id"] == "p1"
    assert (event["outcome"], event["status_code"]) == ("success", 201)
    assert event["before"] is None
    assert event["after"] == router_values(router)

    renamed = member.put(f"/v2.0/routers/{router['id']}", json={"router": {"name": "core"}})
    assert renamed.status_code == 200
    event = only_event_of(api, renamed)
    assert event["action"] == "update_router"
    assert (event["token_id"], event["project_id"]) == (member_id, "p1")
    assert event["before"] == router_values(router)
    assert event["after"] == router_values(renamed.json()["router"])

    body = {"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}}
    added = member.post(helpers_url(router["id"]), json=body)
    assert added.status_code == 201
    binding = added.json()["conntrack_helper"]
    event = only_event_of(api, added)
    assert event["action"] == "create_router_conntrack_helper"
    assert (event["target_type"], event["target_id"]) == ("conntrack_helper", binding["id"])
    assert (event["status_code"], event["token_id"]) == (201, member_id)
    assert event["before"] is None
    assert event["after"] == binding_values(binding)

    changed = member.put(
        helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {"port": 6969}}
    )
    assert changed.status_code == 200
    event = only_event_of(api, changed)
    assert event["action"] == "update_router_conntrack_helper"
    assert event["before"] == binding_values(binding)
    assert event["after"] == binding_values(changed.json()["conntrack_helper"])
    assert event["after"]["port"] == 6969

    removed = member.delete(helpers_url(router["id"], binding["id"]))
    assert removed.status_code == 204
    event = only_event_of(api, removed)
    assert (event["action"], event["status_code"]) == ("delete_router_conntrack_helper", 204)
    assert event["before"] == binding_values(changed.json()["conntrack_helper"])
    assert event["after"] is None

    last = api.create_helper(router["id"], "tcp", 21, "ftp")
    shown = api.get(f"/v2.0/routers/{router['id']}").json()["router"]
    deleted = api.delete(f"/v2.0/routers/{router['id']}")
    assert deleted.status_code == 204
    event = only_event_of(api, deleted)
    assert (event["action"], event["status_code"]) == ("delete_router", 204)
    assert (event["token_id"], event["after"]) == (admin_id, None)
    assert event["before"] == {
        **router_values(shown),
        "conntrack_helpers": [binding_values(last)],
    }

    everything = events(api)
    assert all(e["outcome"] == "success" for e in everything)
    # Reads (including these listings) are not changes: 7 changes, 7 rows.
    assert len(everything) == 7
    assert len({e["request_id"] for e in everything}) == 7


def test_failed_changes_leave_one_failed_event_and_no_success_row(
    api: Api, member: Api, router: JSON
) -> None:
    api.create_helper(router["id"], "tcp", 21, "ftp")
    before = events(api)
    snapshot = api.snapshot()
    url = helpers_url(router["id"])
    failures = [
        member.post(
            url, json={"conntrack_helper": {"protocol": "tcp", "port": 0, "helper": "ftp"}}
        ),
        member.post(
            url, json={"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "ftp"}}
        ),
        member.put(
            f"/v2.0/routers/{router['id']}",
            json={"router": {"name": "x"}},
            headers={"If-Match": "revision_number=999"},
        ),
        member.post(url, json={"conntrack_helper": {"protocol": "tcp", "port": 21}}),
        api.post("/v2.0/routers", json={"router": {"name": "r", "bogus": 1}}),
    ]
    assert [r.status_code for r in failures] == [400, 409, 412, 400, 400]
    # Allowed, then failed: one `failed` event each, nothing before or after (rolled back).
    # Refused before the policy looked (a body that does not parse): no event.
    member_id = token_id_of(api, secret_of(member))
    expected = [
        ("create_router_conntrack_helper", "router", router["id"], 400),
        ("create_router_conntrack_helper", "router", router["id"], 409),
        ("update_router", "router", router["id"], 412),
    ]
    for response, (action, target_type, target_id, status) in zip(
        failures[:3], expected, strict=True
    ):
        event = only_event_of(api, response)
        assert (event["outcome"], event["action"], event["status_code"]) == (
            "failed",
            action,
            status,
        )
        assert (event["target_type"], event["target_id"]) == (target_type, target_id)
        assert (event["token_id"], event["target_project_id"]) == (member_id, "p1")
        assert (event["before"], event["after"]) == (None, None)
        assert error_of(response)["message"] in event["detail"]
    for response in failures[3:]:
        assert events_of(api, response) == []
    assert [e for e in events(api) if e["outcome"] != "failed"] == before
    failed = {e["id"] for r in failures[:3] for e in events_of(api, r)}
    assert {e["id"] for e in events(api, outcome="failed")} == failed
    assert api.snapshot() == snapshot


# --- denied attempts ---------------------------------------------------------------------------


def test_policy_refusals_are_recorded_as_denied(api: Api, router: JSON) -> None:
    reader = api.as_token(api.issue_token("p1", ["reader"]))
    reader_id = token_id_of(api, secret_of(reader))
    snapshot = api.snapshot()

    body = {"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "ftp"}}
    refused = reader.post(helpers_url(router["id"]), json=body)
    assert refused.status_code == 403
    event = only_event_of(api, refused)
    assert (event["outcome"], event["status_code"]) == ("denied", 403)
    assert event["action"] == "create_router_conntrack_helper"
    assert event["target_project_id"] == "p1"
    assert event["target_id"] == router["id"]
    assert (event["token_id"], event["project_id"]) == (reader_id, "p1")
    assert (event["before"], event["after"]) == (None, None)
    assert event["detail"] == f"POST /v2.0/routers/{router['id']}/conntrack_helpers"

    # Reading the audit trail is for admins; asking is itself a denied attempt.
    peek = reader.get("/v2.0/audit_events")
    assert peek.status_code == 403
    event = only_event_of(api, peek)
    assert (event["action"], event["outcome"]) == ("get_audit_events", "denied")
    assert api.snapshot() == snapshot


def test_cross_project_probes_are_404_and_recorded(api: Api, outsider: Api, router: JSON) -> None:
    binding = api.create_helper(router["id"], "tcp", 21, "ftp")
    outsider_id = token_id_of(api, secret_of(outsider))
    snapshot = api.snapshot()
    base = f"/v2.0/routers/{router['id']}"
    body = {"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}}
    probes = [
        outsider.get(base),
        outsider.put(base, json={"router": {"name": "mine"}}),
        outsider.delete(base),
        outsider.get(helpers_url(router["id"])),
        outsider.post(helpers_url(router["id"]), json=body),
        outsider.get(helpers_url(router["id"], binding["id"])),
        outsider.put(
            helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {"port": 2121}}
        ),
        outsider.delete(helpers_url(router["id"], binding["id"])),
    ]
    unknown = outsider.get("/v2.0/routers/00000000-0000-4000-8000-000000000000")
    for response in [*probes, unknown]:
        assert response.status_code == 404, response.text
        assert error_of(response)["type"] == "RouterNotFound"
    # The same answer as an id that does not exist, apart from the id itself.
    assert error_of(probes[0])["message"].replace(router["id"], "X") == error_of(unknown)[
        "message"
    ].replace("00000000-0000-4000-8000-000000000000", "X")

    for response in probes:
        event = only_event_of(api, response)
        assert (event["outcome"], event["status_code"]) == ("denied", 404)
        assert (event["target_type"], event["target_id"]) == ("router", router["id"])
        assert event["target_project_id"] == "p1"
        assert (event["token_id"], event["project_id"]) == (outsider_id, "p2")
        assert event["detail"].startswith(response.request.method + " " + base)
    # An id that names nothing was not an attempt on anyone's object.
    assert events_of(api, unknown) == []
    assert api.snapshot() == snapshot
    denied = events(api, outcome="denied", token_id=outsider_id)
    assert len(denied) == len(probes)


def test_unauthenticated_requests_are_recorded_as_denied(api: Api, router: JSON) -> None:
    revoked_secret = api.issue_token("p1", ["member"])
    with api.store.unit_of_work() as repo:
        repo.tokens.revoke(token_id_of(api, revoked_secret), datetime.now(UTC))
    attempts = [
        api.as_token(None).get("/v2.0/routers"),
        api.as_token(WRONG_TOKEN).delete(f"/v2.0/routers/{router['id']}"),
        api.as_token(revoked_secret).get(f"/v2.0/routers/{router['id']}"),
        api.as_token("not-even-a-token").get("/v2.0/audit_events"),
    ]
    assert [r.status_code for r in attempts] == [401] * 4
    app_state(api).failed_authentications.flush()
    # One event per client (and token, when it exists) per window, named by its first request.
    unknown, revoked = only_event_of(api, attempts[0]), only_event_of(api, attempts[2])
    assert events_of(api, attempts[1]) == events_of(api, attempts[3]) == []
    for event, response in ((unknown, attempts[0]), (revoked, attempts[2])):
        assert (event["outcome"], event["status_code"]) == ("denied", 401)
        assert event["action"] == "authenticate"
        assert event["project_id"] is None
        assert event["detail"].startswith(f"{response.request.method} {response.request.url.path}")
    assert revoked["token_id"] == token_id_of(api, revoked_secret)
    assert unknown["token_id"] is None
    assert (unknown["after"]["failures"], revoked["after"]["failures"]) == (3, 1)
    assert api.snapshot().routers[0].id == router["id"]
    assert len(api.snapshot().routers) == 1


# --- atomicity -----------------------------------------------------------------------------------


def _allow_audit_rows(api: Api) -> None:
    allow_audit_inserts(api.store.url)


def test_a_change_that_cannot_be_recorded_is_not_made(
    api: Api, outsider: Api, router: JSON
) -> None:
    binding = api.create_helper(router["id"], "tcp", 21, "ftp")
    snapshot = api.snapshot()
    recorded = events(api)
    refuse_audit_inserts(api.store.url)
    body = {"conntrack_helper": {"protocol": "udp", "port": 69, "helper": "tftp"}}
    attempts = [
        api.post("/v2.0/routers", json={"router": {"name": "n", "project_id": "p1"}}),
        api.put(f"/v2.0/routers/{router['id']}", json={"router": {"name": "renamed"}}),
        api.post(helpers_url(router["id"]), json=body),
        api.put(helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {"port": 1}}),
        api.delete(helpers_url(router["id"], binding["id"])),
        api.delete(f"/v2.0/routers/{router['id']}"),
    ]
    # A constraint refused the insert: the store reports it as a conflict, nothing changed.
    assert [r.status_code for r in attempts] == [409] * len(attempts)
    assert api.snapshot() == snapshot
    # A denial that cannot be recorded is still a denial (the failure is logged).
    assert outsider.get(f"/v2.0/routers/{router['id']}").status_code == 404
    assert api.store.flush_denied(5.0)  # the background writer tried (and gave up) already
    _allow_audit_rows(api)
    assert events(api) == recorded


# --- JSON log lines ----------------------------------------------------------------------------


def test_log_lines_match_the_rows_and_hold_no_secret(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything any logger says, not only the audit lines
    member_secret = api.issue_token("p1", ["member"])
    outsider_secret = api.issue_token("p2", ["reader"])
    member = api.as_token(member_secret)
    router = api.create_router(name="logged", project_id="p1")
    binding = member.post(
        helpers_url(router["id"]),
        json={"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "ftp"}},
    ).json()["conntrack_helper"]
    member.put(helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {"port": 2121}})
    assert api.as_token(outsider_secret).get(f"/v2.0/routers/{router['id']}").status_code == 404
    assert api.as_token(WRONG_TOKEN).get("/v2.0/routers").status_code == 401
    api.delete(f"/v2.0/routers/{router['id']}")

    rows = events(api)  # first: it waits for the denied attempts' background batch
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cthm.audit"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "cthm.audit")
    # A change is logged as it commits; a denied attempt when its background batch commits.
    assert [line["action"] for line in lines if line["outcome"] != "denied"] == [
        "create_router",
        "create_router_conntrack_helper",
        "update_router_conntrack_helper",
        "delete_router",
    ]
    denied = [line["action"] for line in lines if line["outcome"] == "denied"]
    assert sorted(denied) == ["authenticate", "get_router"]  # a 401 is written before its answer
    assert sorted(lines, key=lambda e: e["id"]) == sorted(rows, key=lambda e: e["id"])

    assert api.admin_token is not None
    secrets = [api.admin_token, member_secret, outsider_secret, WRONG_TOKEN]
    for record in caplog.records:
        text = record.getMessage() + (str(record.args) if record.args else "")
        for secret in secrets:
            assert secret not in text, record
            assert secret[5:25] not in text, record
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in json.dumps(rows)


# --- listing -----------------------------------------------------------------------------------


@pytest.fixture
def three_events(api: Api) -> list[JSON]:
    first = api.create_router(name="a", project_id="p1")
    api.create_router(name="b", project_id="p2")
    api.put(f"/v2.0/routers/{first['id']}", json={"router": {"name": "a2"}})
    found = events(api)
    assert len(found) == 3
    return found


def test_listing_filters_window_order_and_pages(api: Api, three_events: list[JSON]) -> None:
    first, second, third = three_events
    times = [datetime.fromisoformat(e["time"]) for e in three_events]
    assert times == sorted(times), "oldest first by default"

    assert [e["id"] for e in events(api, action="update_router")] == [third["id"]]
    assert events(api, outcome="denied") == []
    assert [e["id"] for e in events(api, target_project_id="p2")] == [second["id"]]
    both = events(api, target_id=[first["target_id"], second["target_id"]])
    assert [e["id"] for e in both] == [first["id"], second["id"], third["id"]]
    assert [e["id"] for e in events(api, sort_key="time", sort_dir="desc")] == [
        third["id"],
        second["id"],
        first["id"],
    ]

    since = events(api, since=second["time"])
    assert [e["id"] for e in since] == [second["id"], third["id"]]
    until = events(api, until=second["time"])
    assert [e["id"] for e in until] == [first["id"]]
    window = events(
        api,
        since=(times[1] - timedelta(microseconds=1))
        .astimezone(datetime.now().astimezone().tzinfo)
        .isoformat(),
        until=(times[1] + timedelta(microseconds=1)).isoformat(),
    )
    assert [e["id"] for e in window] == [second["id"]]

    page = api.get("/v2.0/audit_events", params={"limit": 2, "action": "create_router"})
    assert page.status_code == 200
    assert [e["id"] for e in page.json()["audit_events"]] == [first["id"], second["id"]]
    assert "audit_events_links" not in page.json()
    page = api.get("/v2.0/audit_events", params={"limit": 1, "since": first["time"]})
    body = page.json()
    assert [e["id"] for e in body["audit_events"]] == [first["id"]]
    (link,) = body["audit_events_links"]
    assert link["rel"] == "next"
    following = api.get(link["href"]).json()
    assert [e["id"] for e in following["audit_events"]] == [second["id"]]
    rels = {link["rel"] for link in following["audit_events_links"]}
    assert rels == {"next", "previous"}

    only = api.get("/v2.0/audit_events", params={"fields": ["action", "outcome"]}).json()
    assert only["audit_events"][0] == {"action": "create_router", "outcome": "success"}


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"outcome": "maybe"}, "outcome"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2024-13-01T00:00:00Z"}, "until"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"time": "0001-01-01T00:00:00+01:00"}, "time"),
        ({"since": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]}, "since"),
        ({"status_code": "abc"}, "status_code"),
        ({"bogus": "1"}, "bogus"),
        ({"sort_key": "before"}, "before"),
        ({"before": "x"}, "before"),
        ({"marker": "00000000-0000-4000-8000-000000000000"}, "marker"),
    ],
)
def test_listing_refuses_bad_parameters(
    api: Api, three_events: list[JSON], params: dict[str, Any], fragment: str
) -> None:
    response = api.get("/v2.0/audit_events", params=params)
    assert response.status_code == 400, response.text
    assert fragment in error_of(response)["message"]


def test_only_admins_read_the_trail(api: Api, three_events: list[JSON]) -> None:
    for roles in (["member"], ["reader"], ["agent"]):
        caller = api.as_token(api.issue_token("p1", roles))
        response = caller.get("/v2.0/audit_events")
        assert response.status_code == 403, roles
        assert "audit_events" not in response.json()
    other_admin = api.as_token(api.issue_token("p9", ["admin"]))
    assert [e["id"] for e in events(other_admin)][:3] == [e["id"] for e in three_events]


def test_token_creation_and_revocation_are_recorded_without_the_secret(api: Api) -> None:
    body = {"auth_token": {"project_id": "p1", "roles": ["member"], "description": "ci"}}
    created = api.post("/v2.0/auth_tokens", json=body)
    assert created.status_code == 201, created.text
    token = created.json()["auth_token"]
    secret = token["token"]
    event = only_event_of(api, created)
    assert (event["action"], event["outcome"], event["status_code"]) == (
        "create_auth_token",
        "success",
        201,
    )
    assert (event["target_type"], event["target_id"]) == ("auth_token", token["id"])
    assert event["target_project_id"] == "p1"
    assert event["token_id"] == token_id_of(api, api.admin_token)
    assert event["before"] is None
    assert event["after"] == {k: v for k, v in token.items() if k != "token"}

    revoked = api.delete(f"/v2.0/auth_tokens/{token['id']}")
    assert revoked.status_code == 204
    event = only_event_of(api, revoked)
    assert (event["action"], event["status_code"]) == ("delete_auth_token", 204)
    assert event["before"]["revoked_at"] is None
    assert event["after"]["revoked_at"] is not None

    # A member may not mint tokens: denied, recorded, and no token made.
    member = api.as_token(api.issue_token("p1", ["member"]))
    refused = member.post("/v2.0/auth_tokens", json=body)
    assert refused.status_code == 403
    assert only_event_of(api, refused)["outcome"] == "denied"

    everything = json.dumps(events(api))
    assert secret not in everything
    assert secret[5:] not in everything


def test_an_unauthenticated_flood_is_one_event_with_a_count(api: Api) -> None:
    # One client's failures in a window are one event, written at the first failure and
    # recounted later, so a flood cannot fill the database.
    stranger = api.as_token(WRONG_TOKEN)
    first = stranger.get("/v2.0/routers")
    for _ in range(39):
        assert stranger.get("/v2.0/audit_events").status_code == 401

    def rows() -> list[JSON]:
        with api.store.unit_of_work(write=False) as repo:
            return [e for e in repo.audit.list(ListQuery()) if e["action"] == "authenticate"]

    assert len(rows()) == 1  # durable from the first failure on
    app_state(api).failed_authentications.flush()  # what the server does every 2 s
    (event,) = rows()
    assert event["request_id"] == first.headers[REQUEST_ID]
    assert event["after"]["failures"] == 40
    assert event["after"]["client"] == "testclient"
    assert event["detail"] == "GET /v2.0/routers (40 failures from testclient in this window)"
