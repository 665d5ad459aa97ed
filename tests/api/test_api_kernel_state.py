"""GET /v2.0/routers/{id}/kernel_state over the real app, with real tokens, a real store, and a
real agent over the real nftables backend in namespaces this test creates."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from datetime import datetime

import pytest

from cthm.agent import Agent, LocalStoreSource
from cthm.api import create_app
from cthm.netfilter import NftablesBackend, make_runner
from cthm.testing import NamespaceFactory

from .conftest import fast_authenticator
from .support import (
    JSON,
    Api,
    ApiFactory,
    TestClient,
    error_of,
    issue_token,
    make_settings,
    make_store,
)

NO_AGENT = "no agent in this process"
KEYS = {
    "router_id",
    "namespace",
    "desired",
    "actual",
    "missing",
    "unexpected",
    "garbage",
    "in_sync",
    "verified_at",
    "last_error",
    "last_error_at",
    "drift_repairs",
    "shadowed",
    "shadow_checked_at",
    "hosts",
}


def kernel_state(api: Api, router_id: str) -> JSON:
    response = api.get(f"/v2.0/routers/{router_id}/kernel_state")
    assert response.status_code == 200, response.text
    body: JSON = response.json()["kernel_state"]
    assert set(body) == KEYS
    return body


def kernel_state_revision(api: Api, router_id: str) -> int:
    revision: int = api.get(f"/v2.0/routers/{router_id}").json()["router"]["revision_number"]
    return revision


def iso(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


class AgentApi:
    """An API whose app is given a real, unstarted agent's kernel_state (as `cthm serve` does);
    tests drive the agent with sync_all()."""

    def __init__(self, api: Api, agent: Agent) -> None:
        self.api = api
        self.agent = agent


@pytest.fixture
def agent_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentApi]:
    directory = tmp_path_factory.mktemp("kernel-state")
    settings = make_settings(directory)
    store = make_store(settings)
    backend = NftablesBackend(make_runner("auto"))
    agent = Agent(LocalStoreSource(store), backend, settings.catalog(), sweep_orphans=False)
    app = create_app(
        settings, store, kernel_state=agent.kernel_state, authenticator=fast_authenticator()
    )
    client = TestClient(app)
    token = issue_token(store, "admin", ["admin"])
    api = Api(client=client, store=store, token=token, admin_token=token)
    try:
        yield AgentApi(api, agent)
    finally:
        client.close()
        agent.stop()
        backend.close()
        store.close()


def test_without_an_agent_the_kernel_is_unknown(api: Api) -> None:
    router = api.create_router(name="edge", project_id="p1", namespace="cthm-nowhere-ks")
    api.create_helper(router["id"], "udp", 1719, "h323")

    body = kernel_state(api, router["id"])

    assert body["router_id"] == router["id"]
    assert body["namespace"] == "cthm-nowhere-ks"
    assert body["desired"] == [
        {
            "protocol": "udp",
            "port": 1719,
            "direction": "ingress",
            "helper": "h323",
            "kernel_helper": "RAS",
        }
    ]
    assert body["in_sync"] is None
    assert NO_AGENT in body["last_error"]
    assert body["hosts"] == []  # no node agent reports its namespace either
    assert (body["actual"], body["missing"], body["unexpected"]) == ([], [], [])
    assert body["verified_at"] is None


@pytest.mark.kernel
def test_verified_state_drift_and_pending_changes(
    agent_api: AgentApi, netns: NamespaceFactory
) -> None:
    api, agent = agent_api.api, agent_api.agent
    namespace = netns.create("ks")
    router = api.create_router(name="edge", project_id="p1", namespace=namespace)
    api.create_helper(router["id"], "tcp", 21, "ftp")
    api.create_helper(router["id"], "udp", 1719, "h323")

    unseen = kernel_state(api, router["id"])
    assert unseen["in_sync"] is None
    assert unseen["last_error"] is None, "an agent runs: it has just not looked yet"

    agent.sync_all()
    body = kernel_state(api, router["id"])
    assert body["in_sync"] is True
    verified = iso(body["verified_at"])
    ras = {"protocol": "udp", "port": 1719, "helper": "h323", "kernel_helper": "RAS"}
    ftp = {"protocol": "tcp", "port": 21, "helper": "ftp", "kernel_helper": "ftp"}
    ras["direction"] = ftp["direction"] = "ingress"
    assert sorted(body["desired"], key=str) == sorted([ras, ftp], key=str)
    assert sorted(body["actual"], key=str) == sorted([ras, ftp], key=str)
    assert (body["missing"], body["unexpected"], body["garbage"]) == ([], [], [])
    assert (body["last_error"], body["drift_repairs"]) == (None, 0)
    # The in-process agent is the one host: its entry is the top level, with its table seen.
    (host,) = body["hosts"]
    assert host["host"] == socket.gethostname()
    assert (host["in_sync"], host["table_present"], host["verified_at"]) == (
        True,
        True,
        body["verified_at"],
    )
    assert host["revision_number"] == kernel_state_revision(api, router["id"])

    # A change the agent has not applied yet: the kernel does not hold it, and says so.
    api.create_helper(router["id"], "udp", 69, "tftp")
    pending = kernel_state(api, router["id"])
    assert pending["in_sync"] is False
    assert pending["missing"] == [
        {
            "protocol": "udp",
            "port": 69,
            "direction": "ingress",
            "helper": "tftp",
            "kernel_helper": "tftp",
        }
    ]
    agent.sync_all()
    assert kernel_state(api, router["id"])["in_sync"] is True

    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "flush", "table", "inet", "cthm"],
        check=True,
        timeout=10,
    )
    agent.sync_all()
    repaired = kernel_state(api, router["id"])
    assert repaired["drift_repairs"] == 1
    assert repaired["in_sync"] is True
    assert iso(repaired["verified_at"]) >= verified


@pytest.mark.kernel
def test_missing_namespace_reports_the_error(agent_api: AgentApi) -> None:
    api, agent = agent_api.api, agent_api.agent
    router = api.create_router(name="ghost", project_id="p1", namespace="cthm-nowhere-ks2")
    api.create_helper(router["id"], "tcp", 21, "ftp")

    agent.sync_all()

    body = kernel_state(api, router["id"])
    assert body["in_sync"] is False
    assert body["last_error"] == "namespace cthm-nowhere-ks2 not found"
    iso(body["last_error_at"])
    assert body["verified_at"] is None
    assert [m["port"] for m in body["missing"]] == [21]


def test_policy_is_that_of_get_router(api_factory: ApiFactory) -> None:
    api = api_factory()
    router = api.create_router(name="edge", project_id="pa", namespace="cthm-nowhere-ks3")
    url = f"/v2.0/routers/{router['id']}/kernel_state"

    own_reader = api.as_token(api.issue_token("pa", ["reader"]))
    assert own_reader.get(url).status_code == 200
    agent = api.as_token(api.issue_token("pz", ["agent"]))
    assert agent.get(url).status_code == 200

    other_member = api.as_token(api.issue_token("pb", ["member"]))
    hidden = other_member.get(url)
    assert hidden.status_code == 404
    unknown = api.get("/v2.0/routers/00000000-0000-4000-8000-000000000000/kernel_state")
    assert unknown.status_code == 404
    assert error_of(hidden)["type"] == error_of(unknown)["type"] == "RouterNotFound"
    assert api.as_token(None).get(url).status_code == 401
    assert api.get(url + "?fields=id").status_code == 400


@pytest.mark.kernel
def test_assignments_carry_their_direction(agent_api: AgentApi, netns: NamespaceFactory) -> None:
    api, agent = agent_api.api, agent_api.agent
    namespace = netns.create("ksdir")
    router = api.create_router(name="edge", project_id="p1", namespace=namespace)
    api.create_helper(router["id"], "tcp", 21, "ftp")
    api.create_helper(router["id"], "tcp", 21, "ftp", direction="output")
    api.create_helper(router["id"], "udp", 69, "tftp", direction="output")

    agent.sync_all()
    body = kernel_state(api, router["id"])

    def row(protocol: str, port: int, helper: str, direction: str) -> JSON:
        return {
            "protocol": protocol,
            "port": port,
            "direction": direction,
            "helper": helper,
            "kernel_helper": helper,
        }

    expected = [
        row("tcp", 21, "ftp", "ingress"),
        row("tcp", 21, "ftp", "output"),
        row("udp", 69, "tftp", "output"),
    ]
    assert sorted(body["desired"], key=str) == sorted(expected, key=str)
    assert sorted(body["actual"], key=str) == sorted(expected, key=str), body
    assert (body["missing"], body["unexpected"], body["garbage"]) == ([], [], [])
    assert body["in_sync"] is True

    # Only the direction of one binding changes: the kernel must move it to the other hook.
    tftp = next(
        b
        for b in api.get(f"/v2.0/routers/{router['id']}").json()["router"]["conntrack_helpers"]
        if b["port"] == 69
    )
    moved = api.put(
        f"/v2.0/routers/{router['id']}/conntrack_helpers/{tftp['id']}",
        json={"conntrack_helper": {"direction": "ingress"}},
    )
    assert moved.status_code == 200, moved.text
    pending = kernel_state(api, router["id"])
    assert pending["in_sync"] is False
    assert pending["missing"] == [row("udp", 69, "tftp", "ingress")]
    assert pending["unexpected"] == [row("udp", 69, "tftp", "output")]
    agent.sync_all()
    settled = kernel_state(api, router["id"])
    assert settled["in_sync"] is True
    assert row("udp", 69, "tftp", "ingress") in settled["actual"]
