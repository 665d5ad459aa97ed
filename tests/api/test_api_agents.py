"""GET /v2.0/agents and /v2.0/agents/{id} over the app of a real Service (what `cthm serve`
runs): a real agent on a real kernel backend, its backend choice, its counts after real
reconciles in a namespace this test creates, its liveness, the list features, and the policy."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cthm.api.routes.agents import AGENT_TYPE, is_alive
from cthm.domain import AgentSnapshot, derive_agent_id
from cthm.testing import NamespaceFactory

from .hosts_support import AGENT_KEYS, CONFIGURATION_KEYS
from .served import Served as BaseServed
from .served import services
from .support import JSON, error_of

# As a node agent's body: the same keys (hosts_support).
KEYS = AGENT_KEYS
COUNT_KEYS = {"applied", "noop", "failed", "removed", "drift"}
SETTLE_TIMEOUT = 15.0


class Served(BaseServed):
    """A started Service and an Api over its app, as its admin."""

    def agents(self, **params: Any) -> list[JSON]:
        response = self.api.get("/v2.0/agents", params=params)
        assert response.status_code == 200, response.text
        agents: list[JSON] = response.json()["agents"]
        return agents

    def agent(self) -> JSON:
        (agent,) = self.agents()
        assert set(agent) == KEYS
        assert set(agent["configurations"]) == CONFIGURATION_KEYS
        assert set(agent["configurations"]["counts"]) == COUNT_KEYS
        return agent


ServeFactory = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFactory]:
    yield from services(tmp_path, Served)


def iso(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


def wait_for(served: Served, done: Callable[[JSON], bool]) -> JSON:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    agent = served.agent()
    while not done(agent) and time.monotonic() < deadline:
        time.sleep(0.05)
        agent = served.agent()
    return agent


@pytest.mark.kernel
def test_the_agent_of_an_iptables_service_says_so_and_why(
    serve: ServeFactory, netns: NamespaceFactory
) -> None:
    served = serve(backend="iptables")
    before = datetime.now(UTC)
    agent = served.agent()
    host = socket.gethostname()
    assert agent["id"] == derive_agent_id(host, served.service.settings.data_dir)
    assert str(uuid.UUID(agent["id"])) == agent["id"]
    fixed = {k: agent[k] for k in KEYS - {"configurations", "heartbeat_timestamp"}}
    assert fixed == {
        "id": agent["id"],
        "agent_type": AGENT_TYPE,
        "binary": "cthm",
        "host": host,
        "topic": "cthm",
        "alive": True,
        "admin_state_up": True,
        "created_at": agent["started_at"],
        "started_at": agent["started_at"],
        "availability_zone": None,
        "description": "",
    }
    assert iso(agent["started_at"]) <= before
    assert agent["heartbeat_timestamp"] is not None  # the resync at start
    assert iso(agent["started_at"]) <= iso(agent["heartbeat_timestamp"])
    config = agent["configurations"]
    choice = served.service.backend_choice
    assert choice is not None
    assert config["backend"] == "iptables"
    assert config["chosen_by"] == "configuration"
    assert config["reason"] == choice.reason
    assert config["iptables_flavour"] == choice.flavour
    assert config["retired_backends"] == list(choice.retired_labels)
    assert config["resync_interval"] == served.service.settings.resync_interval

    shown = served.api.get(f"/v2.0/agents/{agent['id']}")
    assert shown.status_code == 200, shown.text
    assert {k: v for k, v in shown.json()["agent"].items() if k != "heartbeat_timestamp"} == {
        k: v for k, v in agent.items() if k != "heartbeat_timestamp"
    }


@pytest.mark.kernel
def test_counts_and_routers_follow_real_reconciles_on_nftables(
    serve: ServeFactory, netns: NamespaceFactory
) -> None:
    served = serve(backend="nftables")
    namespace = netns.create("ag")
    first = served.agent()
    config = first["configurations"]
    assert (config["backend"], config["chosen_by"], config["iptables_flavour"]) == (
        "nftables",
        "configuration",
        None,
    )
    assert config["routers"] == 0
    assert config["counts"] == dict.fromkeys(COUNT_KEYS, 0)

    router = served.api.create_router(name="edge", project_id="p", namespace=namespace)
    served.api.create_helper(router["id"], "tcp", 21, "ftp")
    agent = wait_for(
        served,
        lambda a: (
            a["configurations"]["counts"]["applied"] >= 1
            and a["configurations"]["queue_depth"] == 0
        ),
    )
    config = agent["configurations"]
    assert config["counts"]["applied"] >= 1
    assert config["counts"]["failed"] == 0
    assert config["routers"] == 1
    assert config["queue_depth"] == 0
    assert iso(agent["heartbeat_timestamp"]) > iso(first["heartbeat_timestamp"])

    assert served.api.delete(f"/v2.0/routers/{router['id']}").status_code == 204
    agent = wait_for(served, lambda a: a["configurations"]["counts"]["removed"] >= 1)
    assert agent["configurations"]["routers"] == 0


@pytest.mark.kernel
def test_auto_says_it_chose(serve: ServeFactory, netns: NamespaceFactory) -> None:
    config = serve(backend="auto").agent()["configurations"]
    choice = config["chosen_by"], config["backend"]
    assert choice in {("auto", "nftables"), ("auto", "iptables")}
    assert config["reason"]


@pytest.mark.kernel
def test_the_id_is_stable_per_data_directory(
    serve: ServeFactory, tmp_path: Path, netns: NamespaceFactory
) -> None:
    first = serve(data_dir=tmp_path / "one")
    agent_id = first.agent()["id"]
    first.client.close()
    first.service.stop()
    assert serve(data_dir=tmp_path / "one").agent()["id"] == agent_id
    assert serve(data_dir=tmp_path / "two").agent()["id"] != agent_id


@pytest.mark.kernel
def test_a_stopped_agent_is_not_alive(serve: ServeFactory, netns: NamespaceFactory) -> None:
    served = serve()
    assert served.agent()["alive"] is True
    agent = served.service.agent
    assert agent is not None
    assert agent.stop()
    assert served.agent()["alive"] is False


def test_alive_needs_running_threads_and_a_recent_resync() -> None:
    def snapshot(threads_alive: bool, since: float | None) -> AgentSnapshot:
        now = datetime.now(UTC)
        return AgentSnapshot(
            started_at=now,
            last_resync_at=now,
            last_reconcile_at=None,
            seconds_since_resync=since,
            threads_alive=threads_alive,
            counts={},
            queue_depth=0,
            routers=0,
            workers=2,
            resync_interval=60.0,
        )

    assert is_alive(snapshot(True, 0.0))
    assert is_alive(snapshot(True, 120.0))
    assert not is_alive(snapshot(True, 120.5))  # two resyncs missed
    assert not is_alive(snapshot(True, None))  # never resynced
    assert not is_alive(snapshot(False, 0.0))


@pytest.mark.kernel
def test_list_filters_fields_and_paging(serve: ServeFactory, netns: NamespaceFactory) -> None:
    served = serve()
    agent = served.agent()
    host = agent["host"]
    assert served.agents(agent_type=AGENT_TYPE) == [agent]
    assert served.agents(agent_type="L3 agent") == []
    assert served.agents(host=host, binary="cthm", alive="true", admin_state_up="true") != []
    assert served.agents(host=f"{host}-other") == []
    assert served.agents(alive="false") == []
    assert served.agents(id=agent["id"]) != []
    assert served.agents(id=str(uuid.uuid4())) == []
    listed = served.api.get("/v2.0/agents", params=[("fields", "id"), ("fields", "alive")])
    assert listed.json() == {"agents": [{"id": agent["id"], "alive": True}]}
    assert served.agents(limit="1", sort_key="host", sort_dir="desc")[0]["id"] == agent["id"]
    assert served.agents(marker=agent["id"]) == []
    shown = served.api.get(f"/v2.0/agents/{agent['id']}", params={"fields": "configurations"})
    assert set(shown.json()["agent"]) == {"configurations"}

    for params, field in (
        ({"alive": "maybe"}, "alive"),
        ({"color": "red"}, "color"),
        ({"fields": "secret"}, "secret"),
        ({"sort_key": "configurations"}, "configurations"),
        ({"heartbeat_timestamp": "2024-01-01T00:00:00Z"}, "heartbeat_timestamp"),
        ({"marker": str(uuid.uuid4())}, "marker"),
    ):
        refused = served.api.get("/v2.0/agents", params=params)
        assert refused.status_code == 400, (params, refused.text)
        assert field in error_of(refused)["message"]


def test_without_an_agent_the_list_is_empty_and_ids_are_unknown(serve: ServeFactory) -> None:
    served = serve(agent_enabled=False)
    assert served.agents() == []
    for agent_id in (derive_agent_id(socket.gethostname(), served.service.settings.data_dir), "x"):
        missing = served.api.get(f"/v2.0/agents/{agent_id}")
        assert missing.status_code == 404
        error = error_of(missing)
        assert error["type"] == "AgentNotFound"
        assert error["message"].startswith("Agent ")


@pytest.mark.kernel
def test_policy_only_admin_reads_the_agent(serve: ServeFactory, netns: NamespaceFactory) -> None:
    served = serve()
    agent_id = served.agent()["id"]
    unknown = str(uuid.uuid4())
    for roles, allowed in (
        (["admin"], True),
        (["reader"], False),
        (["member"], False),
        (["agent"], False),
        (["member", "agent"], False),
    ):
        caller = served.api.as_token(served.api.issue_token("pa", roles))
        listed = caller.get("/v2.0/agents")
        shown = caller.get(f"/v2.0/agents/{agent_id}")
        other = caller.get(f"/v2.0/agents/{unknown}")
        if allowed:
            assert (listed.status_code, shown.status_code, other.status_code) == (200, 200, 404)
            assert [a["id"] for a in listed.json()["agents"]] == [agent_id]
            continue
        for response in (listed, shown, other):  # the same answer for any id: nothing to probe
            assert response.status_code == 403, (roles, response.text)
            error = error_of(response)
            assert error == {
                "type": "PolicyNotAuthorized",
                "message": "rule:get_agent is disallowed by policy",
                "detail": "",
            }
    anonymous = served.api.as_token(None)
    for url in ("/v2.0/agents", f"/v2.0/agents/{agent_id}"):
        assert anonymous.get(url).status_code == 401
    # Every refusal is in the audit trail: three requests by each of the four refused tokens.
    audited = served.api.get("/v2.0/audit_events", params={"action": "get_agent"})
    events = audited.json()["audit_events"]
    assert len(events) == 12
    assert {(e["outcome"], e["status_code"], e["target_type"]) for e in events} == {
        ("denied", 403, "agent")
    }


@pytest.mark.kernel
def test_the_agent_is_not_changed_through_the_api(
    serve: ServeFactory, netns: NamespaceFactory
) -> None:
    served = serve()
    agent_id = served.agent()["id"]
    body = {"agent": {"admin_state_up": False}}
    for method, url, json in (
        ("PUT", f"/v2.0/agents/{agent_id}", body),
        ("POST", "/v2.0/agents", body),
    ):
        response = served.api.request(method, url, json=json)
        assert response.status_code == 405, (method, response.text)
        assert error_of(response)["type"] == "HTTPMethodNotAllowed"
        assert response.headers["Allow"] == "GET"
    # DELETE forgets node agents; this server's own agent is not one (forced or not).
    for url in (f"/v2.0/agents/{agent_id}", f"/v2.0/agents/{agent_id}?force=true"):
        refused = served.api.delete(url)
        assert refused.status_code == 409, refused.text
        assert error_of(refused)["type"] == "AgentInProcess"
    agent = served.agent()
    assert (agent["id"], agent["admin_state_up"], agent["alive"]) == (agent_id, True, True)


def test_the_resources_document_names_the_agents_collection(serve: ServeFactory) -> None:
    served = serve(agent_enabled=False)
    resources = {r["name"]: r for r in served.api.get("/v2.0").json()["resources"]}
    assert resources["agent"]["collection"] == "agents"
