"""A write route's whole transaction in its one worker thread (deps.ends_transaction): the
token read first in it, then the route's statements, then the commit. Reading the token later
than the middleware did must not let anything through: a write whose token fails is answered
401 whatever else is wrong with it, changes nothing, and is counted by the throttle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from cthm.api.auth import Authenticator, FailureThrottle
from cthm.api.deps import get_if_match_revision
from support.databases import sqlite_only

from .support import Api, ApiFactory, helpers_url, state_of
from .test_api_auth import revoke_by_secret
from .test_api_write_transaction import write_directly

UNKNOWN = "cthm_" + "Q" * 43
HELPER = {"conntrack_helper": {"protocol": "tcp", "port": 2121, "helper": "ftp"}}


@contextmanager
def statements_by_thread() -> Iterator[list[tuple[int, str]]]:
    """Every SQL statement run meanwhile (any engine), with the thread that ran it."""
    seen: list[tuple[int, str]] = []

    def note(*args: Any) -> None:
        seen.append((threading.get_ident(), str(args[2]).lstrip().split(None, 1)[0].upper()))

    def committed(connection: Any) -> None:
        del connection
        seen.append((threading.get_ident(), "COMMIT"))

    event.listen(Engine, "before_cursor_execute", note)
    event.listen(Engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", note)
        event.remove(Engine, "commit", committed)


def _of_the_write(seen: list[tuple[int, str]]) -> list[str]:
    """The statements of the thread that wrote, which must be the only one that wrote, and not
    the caller's. Another thread may read and commit beside it (a PostgreSQL change-feed
    listener's catch-up read), but must not write."""
    writers = {thread for thread, kind in seen if kind not in ("BEGIN", "SELECT", "COMMIT")}
    assert len(writers) == 1, seen
    (thread,) = writers
    assert thread != threading.get_ident()
    return [kind for ran_in, kind in seen if ran_in == thread]


@pytest.fixture
def api(api_factory: ApiFactory) -> Api:
    return api_factory()


def test_a_write_reads_its_token_changes_and_commits_in_one_thread(api: Api) -> None:
    router = api.create_router(project_id="p1")
    user = api.as_token(api.issue_token("p1", ["member"]))
    url = helpers_url(router["id"])
    with statements_by_thread() as created:
        response = user.post(url, json=HELPER)
    assert response.status_code == 201, response.text
    binding_id = response.json()["conntrack_helper"]["id"]
    with statements_by_thread() as updated:
        assert user.put(f"{url}/{binding_id}", json={"conntrack_helper": {"port": 2122}}).is_success
    with statements_by_thread() as deleted:
        assert user.delete(f"{url}/{binding_id}").status_code == 204
    for seen in (created, updated, deleted):
        in_request = _of_the_write(seen)
        # Its transaction: BEGIN (SQLite's own), the token first, the change, the commit.
        kinds = [kind for kind in in_request if kind != "BEGIN"]
        assert kinds[0] == "SELECT", seen
        assert kinds[-1] == "COMMIT", seen
    assert api.get(url).json()["conntrack_helpers"] == []


@sqlite_only("SQLite's write lock shows whether the write's transaction has begun")
def test_nothing_is_held_before_the_route_runs(api_factory: ApiFactory) -> None:
    """The route's dependencies are solved (in the event loop) before its transaction begins:
    a write beside it meanwhile is not held up."""
    beside: list[bool] = []
    served: list[Api] = []

    def if_match_checked() -> None:
        beside.append(write_directly(served[0]))

    def hook(app: Any) -> None:
        app.dependency_overrides[get_if_match_revision] = if_match_checked

    served.append(api_factory(app_hook=hook))
    api = served[0]
    router = api.create_router(project_id="p1")
    binding = api.create_helper(router["id"])
    url = f"{helpers_url(router['id'])}/{binding['id']}"
    assert api.put(url, json={"conntrack_helper": {"port": 2122}}).status_code == 200
    assert api.delete(url).status_code == 204
    assert beside == [True, True]


def _refused(api: Api, router_id: str, binding_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    url = helpers_url(router_id)
    json_body = {"json": HELPER}
    return [
        ("POST", url, json_body),  # everything else right: only the token is wrong
        ("PUT", f"{url}/{binding_id}", {"json": {"conntrack_helper": {"port": 2200}}}),
        ("DELETE", f"{url}/{binding_id}", {}),
        ("POST", "/v2.0/routers", {"json": {"router": {"name": "x"}}}),
        ("POST", f"/v2.0/routers/{router_id}/resync", {}),  # a route reading it in a dependency
        ("POST", "/v2.0/no-such-thing", json_body),  # 404 otherwise
        ("PATCH", url, json_body),  # 405
        ("POST", url, {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("POST", url, {"json": {"conntrack_helper": {"port": "many"}}}),  # 400
        ("POST", url, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
        ("POST", f"{url}?verbose=1", json_body),  # a query where none is taken
        ("DELETE", f"{url}/{binding_id}", {"headers": {"If-Match": "revision_number=x"}}),
        ("DELETE", f"{url}/not-a-uuid", {}),
        ("POST", helpers_url("00000000-0000-4000-8000-000000000000"), json_body),
    ]


@pytest.mark.parametrize("which", ["unknown", "revoked"])
def test_a_write_whose_token_fails_is_401_whatever_else_is_wrong(api: Api, which: str) -> None:
    router = api.create_router(project_id="p1")
    binding = api.create_helper(router["id"])
    secret = api.issue_token("p1", ["member"])
    if which == "revoked":
        revoke_by_secret(api, secret)
    caller = api.as_token(UNKNOWN if which == "unknown" else secret)
    before = state_of(api)
    for method, url, kwargs in _refused(api, router["id"], binding["id"]):
        response = caller.request(method, url, **kwargs)
        assert response.status_code == 401, (method, url, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["NeutronError"]["message"] == "Authentication required"
    assert state_of(api) == before


def test_a_token_revoked_before_a_write_is_refused_at_once(api: Api) -> None:
    router = api.create_router(project_id="p1")
    secret = api.issue_token("p1", ["member"])
    user = api.as_token(secret)
    assert user.post(helpers_url(router["id"]), json=HELPER).status_code == 201
    revoke_by_secret(api, secret)
    again = {"conntrack_helper": {"protocol": "tcp", "port": 2300, "helper": "ftp"}}
    assert user.post(helpers_url(router["id"]), json=again).status_code == 401
    assert [b["port"] for b in api.get(helpers_url(router["id"])).json()["conntrack_helpers"]] == [
        2121
    ]


def test_failures_found_in_the_routes_thread_are_throttled(api_factory: ApiFactory) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    throttle = FailureThrottle(free_failures=2, base_delay=0.5, max_delay=1.0)
    api = api_factory(authenticator=Authenticator(throttle, sleep=sleep))
    router = api.create_router(project_id="p1")
    secret = api.issue_token("p1", ["member"])
    revoke_by_secret(api, secret)
    revoked = api.as_token(secret)
    for _ in range(4):
        assert revoked.post(helpers_url(router["id"]), json=HELPER).status_code == 401
    assert waits == [0.5, 1.0]  # the first two free, then doubling up to the cap
    assert api.get(helpers_url(router["id"])).json()["conntrack_helpers"] == []


def test_a_denied_write_is_audited_with_its_caller(api: Api) -> None:
    """The principal read in the route's thread is the one the denial's audit event names."""
    router = api.create_router(project_id="p2")
    reader = api.as_token(api.issue_token("p2", ["reader"]))
    assert reader.post(helpers_url(router["id"]), json=HELPER).status_code == 403
    api.store.flush_denied()
    events = api.get("/v2.0/audit_events", params={"outcome": "denied"}).json()["audit_events"]
    denied = [e for e in events if e["action"] == "create_router_conntrack_helper"]
    assert len(denied) == 1, events
    assert denied[0]["project_id"] == "p2"
    assert denied[0]["token_id"]


def test_writes_in_their_own_thread_still_refuse_a_query(api: Api) -> None:
    router = api.create_router(project_id="p1")
    binding = api.create_helper(router["id"])
    url = helpers_url(router["id"])
    before = state_of(api)
    for method, target, body in (
        ("POST", f"{url}?port=1", HELPER),
        ("PUT", f"{url}/{binding['id']}?fields=id", {"conntrack_helper": {"port": 2200}}),
    ):
        response = api.request(method, target, json=body)
        assert response.status_code == 400, (method, target, response.text)
        assert "unknown query parameter" in response.json()["NeutronError"]["message"]
    assert state_of(api) == before


def test_a_create_reads_its_token_and_router_in_one_statement(api_factory: ApiFactory) -> None:
    # Without quotas, whose counts are reads of their own.
    api = api_factory(quota_bindings_per_project=-1, quota_bindings_per_router=-1)
    router = api.create_router(project_id="p1")
    member = api.as_token(api.issue_token("p1", ["member"]))
    for caller, port in ((api, 2121), (member, 2122)):
        body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
        with statements_by_thread() as seen:
            assert caller.post(helpers_url(router["id"]), json=body).status_code == 201
        assert _of_the_write(seen).count("SELECT") == 1, seen
    listed = api.get(helpers_url(router["id"])).json()["conntrack_helpers"]
    assert sorted(b["port"] for b in listed) == [2121, 2122]


def test_a_create_on_a_router_not_there_or_not_seen_is_404(api: Api) -> None:
    theirs = api.create_router(project_id="p2")
    member = api.as_token(api.issue_token("p1", ["member"]))
    before = state_of(api)
    for router_id in ("00000000-0000-4000-8000-000000000000", "not-a-uuid", theirs["id"]):
        response = member.post(helpers_url(router_id), json=HELPER)
        assert response.status_code == 404, (router_id, response.text)
        assert "could not be found" in response.json()["NeutronError"]["message"]
    assert state_of(api) == before
