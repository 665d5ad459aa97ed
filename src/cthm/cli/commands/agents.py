"""`cthm agent list|show`: the agent serving the API, its backend and why, and how it is doing
(GET /v2.0/agents; admin tokens only)."""

from __future__ import annotations

from typing import Any

import click

from cthm.cli import render
from cthm.cli.client import JSONObject
from cthm.cli.context import CliState, json_option, pass_state

AGENT_COLUMNS = (
    ("id", "ID"),
    ("host", "Host"),
    ("alive", "Alive"),
    ("backend", "Backend"),
    ("chosen_by", "Chosen by"),
    ("routers", "Routers"),
    ("queue_depth", "Queue"),
    ("heartbeat_timestamp", "Heartbeat"),
)


@click.group("agent")
def agent_group() -> None:
    """Show the agent that programs this server's kernel (admin tokens)."""


@agent_group.command("list")
@click.option("--host", default=None, help="Only agents of this host.")
@json_option
@pass_state
def list_(state: CliState, host: str | None) -> None:
    """List the agents: id, host, alive, backend and how it was chosen."""
    with state.client() as client:
        agents = client.list_agents(host=host)
    render.emit(
        state, {"agents": agents}, render.print_rows, [_row(a) for a in agents], AGENT_COLUMNS
    )


@agent_group.command("show")
@click.argument("agent_id")
@json_option
@pass_state
def show(state: CliState, agent_id: str) -> None:
    """Show the agent with id AGENT_ID, its backend choice and its counts."""
    with state.client() as client:
        agent = client.get_agent(agent_id)
    render.emit(state, {"agent": agent}, render.print_object, flatten(agent))


def _row(agent: JSONObject) -> JSONObject:
    config = _configurations(agent)
    return {
        **agent,
        "alive": _yes_no(agent.get("alive")),
        **{key: config.get(key) for key in ("backend", "chosen_by", "routers", "queue_depth")},
    }


def flatten(agent: JSONObject) -> JSONObject:
    """The agent's fields, its configurations after them one per row (counts on one line)."""
    config = _configurations(agent)
    rows: JSONObject = {k: v for k, v in agent.items() if k != "configurations"}
    rows["alive"] = _yes_no(rows.get("alive"))
    for key, value in config.items():
        if key == "counts" and isinstance(value, dict):
            value = ", ".join(f"{name} {count}" for name, count in value.items())
        elif key == "retired_backends" and isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "none"
        elif key == "unclaimed_kernel_state" and isinstance(value, dict):
            value = ", ".join(f"{ns} ({owner})" for ns, owner in value.items()) or "none"
        rows[key] = value
    return rows


def _configurations(agent: JSONObject) -> dict[str, Any]:
    config = agent.get("configurations")
    return config if isinstance(config, dict) else {}


def _yes_no(value: Any) -> Any:
    return ("yes" if value else "no") if isinstance(value, bool) else value
