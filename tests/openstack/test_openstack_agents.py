"""openstacksdk's `agents()` / `get_agent()` and `openstack network agent list|show|set|delete`
against a real `cthm serve`: the server's agent as Neutron shows its agents; changes are refused
with 405, never taken."""

from __future__ import annotations

import socket
import uuid

import pytest
from openstack import exceptions
from openstack.connection import Connection
from osclients import Cli

from cthm.api.routes.agents import AGENT_TYPE
from cthm.domain import derive_agent_id
from cthm.testing.service import ServerProcess

AGENT = ("network", "agent")


def test_sdk_lists_and_shows_the_servers_agent(server: ServerProcess, conn: Connection) -> None:
    (agent,) = list(conn.network.agents())
    host = socket.gethostname()
    assert agent.id == derive_agent_id(host, server.data_dir)
    assert (agent.agent_type, agent.binary, agent.host, agent.topic) == (
        AGENT_TYPE,
        "cthm",
        host,
        "cthm",
    )
    assert agent.is_alive is True
    assert agent.is_admin_state_up is True
    assert agent.last_heartbeat_at is not None
    assert agent.started_at is not None
    assert agent.configuration["backend"] == "nftables"
    assert agent.configuration["chosen_by"] == "configuration"

    shown = conn.network.get_agent(agent.id)
    assert (shown.id, shown.host, shown.configuration["backend"]) == (agent.id, host, "nftables")

    assert [a.id for a in conn.network.agents(host=host, agent_type=AGENT_TYPE)] == [agent.id]
    assert list(conn.network.agents(agent_type="L3 agent")) == []
    with pytest.raises(exceptions.NotFoundException):
        conn.network.get_agent(str(uuid.uuid4()))


def test_sdk_cannot_change_or_delete_the_agent(conn: Connection) -> None:
    (agent,) = list(conn.network.agents())
    with pytest.raises(exceptions.HttpException) as refused:
        conn.network.update_agent(agent, is_admin_state_up=False)
    assert refused.value.status_code == 405
    # The in-process agent stops with its server: deleting it is a conflict (a node agent can
    # be forgotten, cthm agent delete).
    with pytest.raises(exceptions.HttpException) as refused:
        conn.network.delete_agent(agent)
    assert refused.value.status_code == 409
    (after,) = list(conn.network.agents())
    assert (after.id, after.is_admin_state_up, after.is_alive) == (agent.id, True, True)


def test_cli_lists_and_shows_the_agent(server: ServerProcess, cli: Cli) -> None:
    host = socket.gethostname()
    agent_id = derive_agent_id(host, server.data_dir)
    assert cli(*AGENT, "list", "-f", "json").json() == [
        {
            "ID": agent_id,
            "Agent Type": AGENT_TYPE,
            "Host": host,
            "Availability Zone": None,
            "Alive": True,
            "State": True,
            "Binary": "cthm",
        }
    ]
    assert cli(*AGENT, "list", "--agent-type", "l3", "-f", "json").json() == []
    assert [a["ID"] for a in cli(*AGENT, "list", "--host", host, "-f", "json").json()] == [agent_id]

    shown = cli(*AGENT, "show", agent_id, "-f", "json").json()
    assert (shown["id"], shown["alive"], shown["admin_state_up"]) == (agent_id, True, True)
    assert shown["configuration"]["backend"] == "nftables"
    assert set(shown["configuration"]["counts"]) == {
        "applied",
        "noop",
        "failed",
        "removed",
        "drift",
    }


def test_cli_set_fails_with_405_and_delete_with_409(server: ServerProcess, cli: Cli) -> None:
    agent_id = derive_agent_id(socket.gethostname(), server.data_dir)
    for args, status in ((("set", "--disable", agent_id), "405"), (("delete", agent_id), "409")):
        refused = cli(*AGENT, *args)
        assert refused.returncode == 1, refused
        assert status in refused.stderr, refused.stderr
    assert "runs inside this server" in refused.stderr
    missing = cli(*AGENT, "show", str(uuid.uuid4()))
    assert missing.returncode == 1
    assert "could not be found" in missing.stderr, missing.stderr
