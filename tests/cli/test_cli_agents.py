"""`cthm agent list|show` against real `cthm serve` processes: the module's server (nftables, the
default) and one started with `--backend iptables`; tokens of each role made with `cthm token`."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator

import pytest
from cthm_cli_harness import Result, ServerProcess, assert_error, run

from cthm.api.routes.agents import AGENT_TYPE
from cthm.domain import derive_agent_id

pytestmark = pytest.mark.kernel


def token_of(cthm: Callable[..., Result], role: str) -> str:
    created = cthm("--json", "token", "create", "--project", "pa", "--role", role).json()
    secret: str = created["auth_token"]["token"]
    return secret


@pytest.fixture(scope="module")
def iptables_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("cthm-serve-iptables")
    with ServerProcess(base / "data", base / "logs", args=("--backend", "iptables")) as server:
        yield server


def test_list_and_show_the_servers_agent(
    cthm: Callable[..., Result], server: ServerProcess
) -> None:
    (agent,) = cthm("--json", "agent", "list").json()["agents"]
    host = socket.gethostname()
    assert agent["id"] == derive_agent_id(host, server.data_dir)
    assert (agent["agent_type"], agent["host"], agent["alive"]) == (AGENT_TYPE, host, True)
    config = agent["configurations"]
    assert (config["backend"], config["chosen_by"]) == ("nftables", "configuration")

    shown = cthm("agent", "show", agent["id"], "--json").json()["agent"]
    assert shown["id"] == agent["id"]
    assert shown["configurations"]["backend"] == "nftables"

    table = cthm("agent", "list")
    assert table.returncode == 0, table
    (row,) = [line for line in table.stdout.splitlines() if agent["id"] in line]
    assert row.split() == [agent["id"], host, "yes", "nftables", "configuration", *row.split()[5:]]

    details = cthm("agent", "show", agent["id"])
    assert details.returncode == 0, details
    lines = {
        line.split()[0]: line.split()[1:] for line in details.stdout.splitlines() if line.split()
    }
    assert lines["backend"] == ["nftables"]
    assert lines["chosen_by"] == ["configuration"]
    assert lines["alive"] == ["yes"]
    assert lines["counts"][:2] == ["applied", str(config["counts"]["applied"]) + ","]
    assert "configurations" not in lines


def test_an_iptables_server_shows_iptables_chosen_by_configuration(
    iptables_server: ServerProcess,
) -> None:
    listed = run(
        "--json", "agent", "list", url=iptables_server.url, token=iptables_server.admin_token
    )
    (agent,) = listed.json()["agents"]
    config = agent["configurations"]
    assert (config["backend"], config["chosen_by"]) == ("iptables", "configuration")
    assert config["reason"] == "set in the configuration"
    assert config["iptables_flavour"] in {"default", "nft", "legacy"}
    assert agent["id"] == derive_agent_id(socket.gethostname(), iptables_server.data_dir)

    shown = run(
        "agent", "show", agent["id"], url=iptables_server.url, token=iptables_server.admin_token
    )
    assert shown.returncode == 0, shown
    assert any(line.split() == ["backend", "iptables"] for line in shown.stdout.splitlines())


def test_filters_and_unknown_ids(cthm: Callable[..., Result]) -> None:
    assert cthm("--json", "agent", "list", "--host", "no-such-host").json() == {"agents": []}
    mine = cthm("--json", "agent", "list", "--host", socket.gethostname()).json()["agents"]
    assert [a["host"] for a in mine] == [socket.gethostname()]
    unknown = str(uuid.uuid4())
    assert_error(cthm("agent", "show", unknown), 1, f"Agent {unknown} could not be found")


def test_only_admins_see_the_agent(cthm: Callable[..., Result], server: ServerProcess) -> None:
    for role in ("reader", "member", "agent"):
        refused = run("agent", "list", url=server.url, token=token_of(cthm, role))
        assert_error(refused, 1, "rule:get_agent is disallowed by policy")
    assert_error(run("agent", "list", url=server.url, token="not-a-token"), 1, "authentication")


def test_help_names_the_commands() -> None:
    shown = run("agent", "--help")
    assert shown.returncode == 0, shown
    assert "list" in shown.stdout
    assert "show" in shown.stdout
