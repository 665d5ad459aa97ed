"""GET /v2.0/routers/kernel_states: every visible router's kernel_state in one answer (what
`cthm status` shows of every router), over the real app and store: the same view as the
per-router endpoint, scoped and filtered as the router listing, and never a conntrack read."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cthm.agent import Agent, LocalStoreSource
from cthm.api import create_app
from cthm.domain import HelperUsageCounts
from cthm.netfilter import NftablesBackend, make_runner
from cthm.testing import NamespaceFactory

from .conftest import fast_authenticator
from .hosts_support import registered, report_status, summary
from .support import JSON, Api, TestClient, issue_token, make_settings, make_store

URL = "/v2.0/routers/kernel_states"
ROUTER_KEYS = {"name", "project_id", "status", "status_reason"}


def states(api: Api, query: str = "") -> list[JSON]:
    response = api.get(URL + query)
    assert response.status_code == 200, response.text
    items: list[JSON] = response.json()["kernel_states"]
    return items


def single(api: Api, router_id: str) -> JSON:
    response = api.get(f"/v2.0/routers/{router_id}/kernel_state")
    assert response.status_code == 200, response.text
    body: JSON = response.json()["kernel_state"]
    return body


def test_no_leak_across_projects_and_the_listing_filters(api: Api) -> None:
    mine = api.create_router(name="a-edge", project_id="pa", namespace="cthm-nowhere-kss1")
    theirs = api.create_router(name="b-edge", project_id="pb", namespace="cthm-nowhere-kss2")
    api.create_helper(mine["id"], "tcp", 21, "ftp")

    everything = states(api, "?sort_key=name")
    assert [s["router_id"] for s in everything] == [mine["id"], theirs["id"]]
    for item in everything:
        # The per-router view, plus what the table needs of the router itself.
        assert {k: v for k, v in item.items() if k not in ROUTER_KEYS} == single(
            api, item["router_id"]
        )
    first = everything[0]
    assert (first["name"], first["project_id"], first["status"]) == ("a-edge", "pa", "PENDING")
    assert first["desired"][0]["kernel_helper"] == "ftp"

    reader = api.as_token(api.issue_token("pa", ["reader"]))
    assert [s["router_id"] for s in states(reader)] == [mine["id"]]
    # A project filter cannot widen a non-admin's scope.
    assert states(reader, "?project_id=pb") == []
    assert [s["router_id"] for s in states(api, "?project_id=pb")] == [theirs["id"]]
    assert [s["router_id"] for s in states(api, "?name=b-edge")] == [theirs["id"]]
    assert states(api, "?status=ERROR") == []

    paged = api.get(URL + "?limit=1&sort_key=name")
    assert [s["router_id"] for s in paged.json()["kernel_states"]] == [mine["id"]]
    assert paged.json()["kernel_states_links"][0]["rel"] == "next"
    # The marker is a router id, as the CLI pages with it (router_id of the last item).
    rest = states(api, f"?limit=1&sort_key=name&marker={mine['id']}")
    assert [s["router_id"] for s in rest] == [theirs["id"]]

    assert api.get(URL + "?fields=id").status_code == 400
    assert api.get(URL + "?colour=red").status_code == 400
    assert api.as_token(None).get(URL).status_code == 401


def test_node_agents_views_as_the_per_router_endpoint(api: Api) -> None:
    agent = api.as_token(api.issue_token("services", ["agent"]))
    placed = api.create_router(name="placed", project_id="pa", namespace="qrouter-kss-a")
    alone = api.create_router(name="alone", project_id="pa", namespace="qrouter-kss-b")
    registered(agent, "node-a", ["qrouter-kss-a"])
    revision = api.get(f"/v2.0/routers/{placed['id']}").json()["router"]["revision_number"]
    placed["revision_number"] = revision
    done = report_status(
        agent, "node-a", placed["id"], revision, kernel=summary(placed, drift_repairs=2)
    )
    assert done.status_code == 200, done.text

    by_id = {s["router_id"]: s for s in states(api)}
    assert by_id[placed["id"]]["in_sync"] is True
    assert by_id[placed["id"]]["drift_repairs"] == 2
    assert [h["host"] for h in by_id[placed["id"]]["hosts"]] == ["node-a"]
    assert by_id[alone["id"]]["hosts"] == []
    assert "no node agent reports namespace qrouter-kss-b" in by_id[alone["id"]]["last_error"]
    for router_id, item in by_id.items():
        assert {k: v for k, v in item.items() if k not in ROUTER_KEYS} == single(api, router_id)


class Counted:
    """The real agent's usage reader, counting its calls."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.calls = 0

    def __call__(self, namespace: str) -> tuple[HelperUsageCounts | None, str | None]:
        self.calls += 1
        return self.agent.helper_usage(namespace)


@pytest.fixture
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Agent, Counted]]:
    settings = make_settings(tmp_path_factory.mktemp("kernel-states"))
    store = make_store(settings)
    backend = NftablesBackend(make_runner("auto"))
    agent = Agent(LocalStoreSource(store), backend, settings.catalog(), sweep_orphans=False)
    counted = Counted(agent)
    app = create_app(
        settings,
        store,
        kernel_state=agent.kernel_state,
        helper_usage=counted,
        local_agent_host="node-here",
        authenticator=fast_authenticator(),
    )
    client = TestClient(app)
    token = issue_token(store, "admin", ["admin"])
    try:
        yield Api(client=client, store=store, token=token, admin_token=token), agent, counted
    finally:
        client.close()
        agent.stop()
        backend.close()
        store.close()


@pytest.mark.kernel
def test_embedded_agent_never_reads_conntrack_for_the_listing(
    embedded: tuple[Api, Agent, Counted], netns: NamespaceFactory
) -> None:
    api, agent, counted = embedded
    namespace = netns.create("kss")
    router = api.create_router(name="edge", project_id="pa", namespace=namespace)
    api.create_helper(router["id"], "tcp", 21, "ftp")
    agent.sync_all()

    (item,) = states(api)
    assert counted.calls == 0
    assert (item["in_sync"], item["status"]) == (True, "ACTIVE")
    assert [h["host"] for h in item["hosts"]] == ["node-here"]
    assert "usage" not in item["desired"][0]

    one = single(api, router["id"])  # the per-router view reads it, now
    assert counted.calls == 1
    assert one["desired"][0]["usage"] == {"connections": 0, "expectations": 0}
    one.pop("usage_error")
    one["desired"] = [{k: v for k, v in row.items() if k != "usage"} for row in one["desired"]]
    assert {k: v for k, v in item.items() if k not in ROUTER_KEYS} == one


def test_node_agents_reported_usage_is_summed_per_binding(api: Api) -> None:
    agent = api.as_token(api.issue_token("services", ["agent"]))
    router = api.create_router(name="used", project_id="pa", namespace="qrouter-kss-u")
    api.create_helper(router["id"], "tcp", 21, "ftp")
    api.create_helper(router["id"], "udp", 69, "tftp")
    router = api.get(f"/v2.0/routers/{router['id']}").json()["router"]
    revision = router["revision_number"]
    for host in ("node-a", "node-b", "node-c"):
        registered(agent, host, ["qrouter-kss-u"])

    def ftp(connections: int, expectations: int) -> JSON:
        return {
            "helper": "ftp",
            "protocol": "tcp",
            "port": 21,
            "connections": connections,
            "expectations": expectations,
        }

    read_at = "2026-12-04T20:00:06Z"
    for host, rows in (("node-a", [ftp(2, 1)]), ("node-b", [ftp(1, 0)])):
        kernel = summary(router, usage=rows, usage_read_at=read_at)
        done = report_status(agent, host, router["id"], revision, kernel=kernel)
        assert done.status_code == 200, done.text
    # node-c reports without usage (an older agent): its share is unknown, and said so.
    report_status(agent, "node-c", router["id"], revision, kernel=summary(router))

    body = single(api, router["id"])
    usage = {row["port"]: row["usage"] for row in body["desired"]}
    assert usage == {21: {"connections": 3, "expectations": 1}, 69: None}
    assert "node-c" in body["usage_error"]
    assert "node-a" not in body["usage_error"]
    assert all("usage" not in row for row in body["actual"])
    # The listing never shows usage.
    (item,) = [s for s in states(api) if s["router_id"] == router["id"]]
    assert all("usage" not in row for row in item["desired"])

    # No host reports usage: the rows have no usage at all, as before this field existed.
    other = api.create_router(name="unused", project_id="pa", namespace="qrouter-kss-v")
    api.create_helper(other["id"], "tcp", 21, "ftp")
    assert all("usage" not in row for row in single(api, other["id"])["desired"])

    bad = summary(router, usage=[{**ftp(1, 0), "connections": -1}])
    assert report_status(agent, "node-a", router["id"], revision, kernel=bad).status_code == 400
