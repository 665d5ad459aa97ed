"""GET /v2.0/watch, the change feed's long poll, over the real app and a real SQLite store:
what each host hears, bookmarks, 410 Gone, and how soon a waiting watch hears of a commit made
by another thread (woken in-process) or by another writer on the same database (read again)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.api import begin_shutdown
from cthm.api.routes import watch as watch_module
from cthm.domain import HelperCatalog, ListQuery, new_binding, new_router
from cthm.store import Store
from cthm.testing.service import ServerProcess

from .hosts_support import registered, watch
from .support import JSON, Api, ApiFactory, error_of, helpers_url

NS_A, NS_B = "qrouter-watch-a", "qrouter-watch-b"


@pytest.fixture
def agent(api: Api) -> Api:
    return api.as_token(api.issue_token("services", ["agent"]))


def answer(response: httpx.Response) -> JSON:
    assert response.status_code == 200, response.text
    body: JSON = response.json()
    assert set(body) == {"revision", "events", "bookmark"}
    return body


def head(api: Api) -> int:
    """The feed's head revision, as the database holds it."""
    with api.store.unit_of_work(write=False) as repo:
        return repo.hosts.head_revision()


def add_binding(store: Store, router_id: str, protocol: str, port: int, helper: str) -> None:
    """A binding committed straight through the store, in the calling thread."""
    with store.unit_of_work() as repo:
        router = repo.get_router(router_id)
        repo.add_binding(
            new_binding(HelperCatalog(), router, protocol=protocol, port=port, helper=helper)
        )


def test_a_host_hears_only_of_its_routers(api: Api, agent: Api) -> None:
    mine = api.create_router(namespace=NS_A)
    theirs = api.create_router(namespace=NS_B)
    registered(agent, "node-a", [NS_A])
    api.create_helper(mine["id"], "tcp", 21, "ftp")
    api.create_helper(theirs["id"], "tcp", 21, "ftp")

    heard = answer(watch(agent, 0, host="node-a", timeout=0))
    assert {e["router_id"] for e in heard["events"]} == {mine["id"]}
    assert all(
        (e["type"], e["namespace"]) == ("MODIFIED", NS_A) and set(e) == {
            "revision", "type", "router_id", "namespace"
        }
        for e in heard["events"]
    )  # fmt: skip
    revisions = [e["revision"] for e in heard["events"]]
    assert revisions == sorted(revisions)
    assert heard["revision"] == head(api) > revisions[-1]  # theirs came last: still moved on
    assert heard["bookmark"] is False

    everything = answer(watch(agent, 0, timeout=0))
    assert {e["router_id"] for e in everything["events"]} == {mine["id"], theirs["id"]}

    since = heard["revision"]
    assert api.delete(f"/v2.0/routers/{mine['id']}").status_code == 204
    deleted = answer(watch(agent, since, host="node-a", timeout=0))
    assert [(e["type"], e["router_id"]) for e in deleted["events"]] == [("DELETED", mine["id"])]


def test_a_watch_with_nothing_for_its_host_is_a_bookmark_at_the_head(api: Api, agent: Api) -> None:
    registered(agent, "node-a", [NS_A])
    theirs = api.create_router(namespace=NS_B)
    since = head(api)
    api.create_helper(theirs["id"], "udp", 69, "tftp")
    renamed = api.put(f"/v2.0/routers/{theirs['id']}", json={"router": {"name": "renamed"}})
    assert renamed.status_code == 200

    heard = answer(watch(agent, since, host="node-a", timeout=0))
    assert heard == {"revision": head(api), "events": [], "bookmark": True}
    assert heard["revision"] > since
    # A host that reports no namespace at all hears nothing, and moves on too.
    assert answer(watch(agent, 0, host="node-unknown", timeout=0))["events"] == []


def test_a_revision_outside_the_retained_history_is_gone(api_factory: ApiFactory) -> None:
    api = api_factory(watch_history=100)
    api.store.change_history = 100  # as `cthm serve` passes settings.watch_history to its store
    for index in range(260):
        api.create_router(namespace=f"qrouter-history-{index}")
    current = head(api)
    with api.store.unit_of_work(write=False) as repo:
        oldest = repo.hosts.oldest_revision()
    assert oldest is not None
    assert current - oldest + 1 >= 100  # at least the newest 100 kept
    assert oldest > 1  # and not everything
    for since in (0, oldest - 2, current + 1, current + 1000):
        gone = watch(api, since, timeout=0)
        assert gone.status_code == 410, (since, gone.text)
        error = error_of(gone)
        assert error["type"] == "ResourceVersionGone"
        assert error["message"] == (
            f"revision {since} is not in the retained history (oldest {oldest}, head "
            f"{current}): list again"
        )
    resumed = answer(watch(api, oldest - 1, timeout=0))
    assert [e["revision"] for e in resumed["events"]] == list(range(oldest, current + 1))


def test_an_answer_is_cut_at_500_events_and_resumes(api: Api) -> None:
    with api.store.unit_of_work() as repo:  # 501 routers in one commit: 501 changes
        for index in range(501):
            repo.add_router(new_router(name="r", project_id="p1", namespace=f"qrouter-{index}"))
    first = answer(watch(api, 0, timeout=0))
    assert len(first["events"]) == 500
    assert first["revision"] == first["events"][-1]["revision"] < head(api)
    rest = answer(watch(api, first["revision"], timeout=0))
    assert len(rest["events"]) == 1
    assert rest["revision"] == head(api)


class Watching:
    """A watch request running in a thread of its own (the test client blocks its caller)."""

    def __init__(self, api: Api, **params: Any) -> None:
        self.response: httpx.Response | None = None
        self.answered_at = 0.0
        self.thread = threading.Thread(target=self._run, args=(api, params), daemon=True)
        self.thread.start()

    def _run(self, api: Api, params: dict[str, Any]) -> None:
        self.response = api.get("/v2.0/watch", params=params)
        self.answered_at = time.monotonic()

    def result(self, timeout: float = 30.0) -> JSON:
        self.thread.join(timeout)
        assert self.response is not None, "the watch did not answer"
        return answer(self.response)


def wait_until_waiting(api: Api, count: int = 1) -> None:
    hub: watch_module.WatchHub = api.client.app.state.watch_hub  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10.0
    while hub.waiting() < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hub.waiting() == count
    time.sleep(0.1)  # its first read is done: it waits now


@pytest.fixture
def no_recheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting watches never read the database again by themselves: only a wake-up answers."""
    monkeypatch.setattr(watch_module, "RECHECK_INTERVAL", 60.0)


def test_a_waiting_watch_is_woken_by_a_commit_in_another_thread(
    api: Api, agent: Api, no_recheck: None
) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-a", [NS_A])
    since = head(api)
    started = time.monotonic()
    waiting = Watching(agent, since=since, host="node-a", timeout=20)
    wait_until_waiting(api)

    committed = threading.Event()
    committed_at = 0.0

    def commit() -> None:
        nonlocal committed_at
        add_binding(api.store, router["id"], "tcp", 21, "ftp")
        committed_at = time.monotonic()
        committed.set()

    writer = threading.Thread(target=commit)
    writer.start()
    writer.join(10)
    heard = waiting.result()
    assert committed.is_set()
    assert [e["router_id"] for e in heard["events"]] == [router["id"]]
    assert waiting.answered_at - committed_at < 1.0  # woken, not timed out (20 s)
    assert waiting.answered_at - started < 10.0
    hub: watch_module.WatchHub = api.client.app.state.watch_hub  # type: ignore[attr-defined]
    assert hub.waiting() == 0


def test_a_waiting_watch_sees_a_commit_of_another_writer_within_a_second(
    api: Api, agent: Api
) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-a", [NS_A])
    since = head(api)
    waiting = Watching(agent, since=since, host="node-a", timeout=20)
    wait_until_waiting(api)
    other = Store(api.store.url)  # another process's store: its commits wake no one here
    try:
        add_binding(other, router["id"], "udp", 69, "tftp")
        committed_at = time.monotonic()
    finally:
        other.close()
    heard = waiting.result()
    assert [e["router_id"] for e in heard["events"]] == [router["id"]]
    assert waiting.answered_at - committed_at < 2.5  # the 1 s re-read, with slack for load


def test_waiting_watches_answer_as_the_server_begins_to_stop(
    api: Api, agent: Api, no_recheck: None
) -> None:
    since = head(api)
    waiting = Watching(agent, since=since, timeout=20)
    wait_until_waiting(api)
    stopping_at = time.monotonic()
    begin_shutdown(api.client.app)  # type: ignore[arg-type]
    assert waiting.result() == {"revision": since, "events": [], "bookmark": True}
    assert waiting.answered_at - stopping_at < 1.0
    started = time.monotonic()
    assert answer(watch(agent, since, timeout=20))["bookmark"] is True  # no wait any more
    assert time.monotonic() - started < 2.0


def test_a_watch_with_no_change_answers_at_its_timeout(api: Api, agent: Api) -> None:
    registered(agent, "node-a", [NS_A])
    api.create_router(namespace=NS_B)  # a change, but not for node-a
    since = head(api)
    started = time.monotonic()
    heard = answer(watch(agent, since, host="node-a", timeout=0.6))
    took = time.monotonic() - started
    assert heard == {"revision": since, "events": [], "bookmark": True}
    assert 0.6 <= took < 3.0
    started = time.monotonic()
    answer(watch(agent, since, timeout=0))
    assert time.monotonic() - started < 1.0


def test_query_parameters_are_checked(agent: Api) -> None:
    for params, field in (
        ({}, "since"),
        ({"since": "x"}, "since"),
        ({"since": "-1"}, "since"),
        ({"since": 0, "timeout": "61"}, "timeout"),
        ({"since": 0, "timeout": "-0.1"}, "timeout"),
        ({"since": 0, "timeout": "nan"}, "timeout"),
        ({"since": 0, "timeout": "soon"}, "timeout"),
        ({"since": 0, "host": "-a"}, "host"),
        ({"since": 0, "resourceVersion": "1"}, "resourceVersion"),
        ({"since": ["0", "1"]}, "since"),
    ):
        refused = agent.get("/v2.0/watch", params=params)
        assert refused.status_code == 400, (params, refused.text)
        assert field in error_of(refused)["message"], refused.text


@pytest.mark.parametrize("roles", [["member"], ["reader"], ["member", "reader"]])
def test_only_agents_and_admins_watch(api: Api, roles: list[str]) -> None:
    caller = api.as_token(api.issue_token("p1", roles))
    refused = watch(caller, 0, timeout=0)
    assert refused.status_code == 403
    assert error_of(refused) == {
        "type": "PolicyNotAuthorized",
        "message": "rule:watch_changes is disallowed by policy",
        "detail": "",
    }
    assert watch(api.as_token(None), 0, timeout=0).status_code == 401
    assert watch(api, 0, timeout=0).status_code == 200


def test_the_feed_follows_binding_changes_through_the_api(api: Api, agent: Api) -> None:
    router = api.create_router(namespace=NS_A)
    registered(agent, "node-a", [NS_A])
    since = head(api)
    binding = api.create_helper(router["id"], "tcp", 21, "ftp")
    updated = api.put(
        helpers_url(router["id"], binding["id"]), json={"conntrack_helper": {"port": 2121}}
    )
    assert updated.status_code == 200
    assert api.delete(helpers_url(router["id"], binding["id"])).status_code == 204
    heard = answer(watch(agent, since, host="node-a", timeout=0))
    assert [e["type"] for e in heard["events"]] == ["MODIFIED"] * 3
    with api.store.unit_of_work(write=False) as repo:
        (stored,) = repo.list_routers(ListQuery(filters={"id": (router["id"],)}))
    assert stored.revision_number == router["revision_number"] + 3


def test_a_real_server_lets_a_long_poll_outlast_its_header_timeout(tmp_path: Path) -> None:
    """The front door times out a request's line and headers (here 1 s), never a request that
    has arrived and waits for its answer; and a watch waiting when a change commits through
    the API (another request, another thread of the server) hears of it at once."""
    args = ("--no-agent", "--header-timeout", "1")
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as server:
        headers = {"X-Auth-Token": server.admin_token}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30.0) as http:
            since = http.get("/v2.0/watch", params={"since": 0, "timeout": 0}).json()["revision"]
            started = time.monotonic()
            quiet = http.get("/v2.0/watch", params={"since": since, "timeout": 2.5})
            took = time.monotonic() - started
            assert quiet.status_code == 200, quiet.text
            assert quiet.json()["bookmark"] is True
            assert 2.5 <= took < 10.0

            answered: list[httpx.Response] = []

            def long_poll() -> None:
                with httpx.Client(base_url=server.url, headers=headers, timeout=30.0) as other:
                    answered.append(
                        other.get("/v2.0/watch", params={"since": since, "timeout": 20})
                    )

            waiting = threading.Thread(target=long_poll)
            waiting.start()
            time.sleep(1.5)  # past the header timeout, waiting
            created = http.post("/v2.0/routers", json={"router": {"name": "w"}})
            assert created.status_code == 201, created.text
            committed_at = time.monotonic()
            waiting.join(25)
            assert answered, "the long poll did not answer"
            assert time.monotonic() - committed_at < 5.0
            (response,) = answered
            assert response.status_code == 200, response.text
            events = response.json()["events"]
            assert [e["router_id"] for e in events] == [created.json()["router"]["id"]]
