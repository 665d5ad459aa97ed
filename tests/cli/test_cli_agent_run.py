"""`cthm agent run`, the node agent's command line: argument and token errors (exit 2, one line),
refusals by a real API (exit 2), registration with a real `cthm serve --no-agent`, SIGTERM
(exit 0, nothing left running), and `cthm agent delete` of the node agent it registered.

Agents run on a FakeHost (a mount namespace whose /run/netns is empty): they see no router
namespace, so nothing here touches a kernel table; the kernel path is tests/hosts/'s.
"""

from __future__ import annotations

import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cthm_cli_harness import Result, ServerProcess, assert_error, free_port, run
from prometheus_client.parser import text_string_to_metric_families

from cthm.domain import node_agent_id
from cthm.testing import AgentProcess, FakeHost, NamespaceFactory

DOWN_TIME = 2.0
WAIT = 20.0
REFUSED = "the API refused the token"
HINT = "cthm token create --role agent --host NAME"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The API alone: `cthm serve --no-agent`, agents dead after 2 s without a report."""
    base = tmp_path_factory.mktemp("cthm-serve-no-agent")
    args = ("--no-agent", "--agent-down-time", str(DOWN_TIME))
    with ServerProcess(base / "data", base / "logs", args=args) as server:
        yield server


@pytest.fixture
def admin(api: ServerProcess) -> Callable[..., Result]:
    return functools.partial(run, url=api.url, token=api.admin_token)


def host_name() -> str:
    return f"node-{uuid.uuid4().hex[:10]}"


def token_file(
    cthm: Callable[..., Result], tmp_path: Path, *, role: str = "agent", host: str | None = None
) -> Path:
    """A new token of `role` (limited to `host` if given), its secret in a file."""
    args = ["--json", "token", "create", "--project", "agents", "--role", role]
    if host is not None:
        args += ["--host", host]
    body = cthm(*args).json()["auth_token"]
    assert body.get("host") == host
    path = tmp_path / f"{role}-{uuid.uuid4().hex[:6]}.token"
    path.write_text(body["token"] + "\n")
    path.chmod(0o600)
    return path


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = WAIT, agent: AgentProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            log = agent.log_tail() if agent is not None else ""
            raise AssertionError(f"not within {timeout}s: {what}\n{log}")
        time.sleep(0.1)


def agents_of(cthm: Callable[..., Result], host: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = cthm("--json", "agent", "list", "--host", host).json()["agents"]
    return listed


def assert_exit_2(result: Result, *fragments: str) -> str:
    """A refused start: exit 2, no traceback, the log lines then one `Error: ...` line last."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [result.stderr.splitlines()[-1]], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (read from /proc now)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop_cleanly(agent: AgentProcess) -> None:
    """SIGTERM: exit 0, and no process the agent started is left."""
    below = descendants(agent.pid)
    code = agent.stop(grace=15.0)
    assert code == 0, agent.log_tail()
    assert not [pid for pid in below if running(pid)], (below, agent.log_tail())
    assert "Traceback" not in agent.log_tail(100_000)


# --- arguments and the token ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--workers", "0"), "--workers"),
        (("--backend", "ebpf"), "--backend"),
        (("--iptables-flavour", "both"), "--iptables-flavour"),
        (("--nft-backend", "python"), "--nft-backend"),
        (("--report-interval", "0"), "--report-interval"),
        (("--resync-interval", "soon"), "--resync-interval"),
        (("--url", "ftp://example.com"), "--url"),
        (("--ca-file", "/nonexistent/ca.pem"), "--ca-file"),
        (("--log-level", "LOUD"), "--log-level"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(args: tuple[str, ...], fragment: str) -> None:
    assert_error(run("agent", "run", *args, token="cthm_x"), 2, fragment)


def test_without_a_token_it_says_where_one_comes_from(tmp_path: Path) -> None:
    # Never the local admin token: a node agent acts only with a token given to it.
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert_error(
        run("agent", "run", url=nowhere), 2, "no token", "--token-file", "CTHM_TOKEN", HINT
    )

    missing = tmp_path / "missing.token"
    assert_error(
        run("agent", "run", "--token-file", str(missing)), 2, f"cannot read token file {missing}"
    )
    garbled = tmp_path / "garbled.token"
    garbled.write_text("two words secret-ish\n")
    line = assert_error(
        run("agent", "run", "--token-file", str(garbled)), 2, "does not hold a token"
    )
    assert "secret-ish" not in line


def test_a_ca_file_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    result = run("agent", "run", "--ca-file", str(garbage), token="cthm_x")
    assert_error(result, 2, f"cannot use --ca-file {garbage}")


def test_an_invalid_host_name_is_a_usage_error() -> None:
    assert_error(run("agent", "run", "--host", "-dash", token="cthm_x"), 2, "invalid --host")
    assert_error(run("agent", "run", "--host", "a/b", token="cthm_x"), 2, "invalid --host")


# --- against a real API -----------------------------------------------------------------------


def test_a_refused_token_exits_2_naming_the_token_needed(
    api: ServerProcess, admin: Callable[..., Result], tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus.token"
    bogus.write_text("cthm_" + "A" * 43 + "\n")
    line = assert_exit_2(run("agent", "run", "--url", api.url, "--token-file", str(bogus)), REFUSED)
    assert HINT in line

    reader = token_file(admin, tmp_path, role="reader")
    assert_exit_2(run("agent", "run", "--url", api.url, "--token-file", str(reader)), REFUSED)

    # A token limited to one host cannot register another.
    limited = token_file(admin, tmp_path, host="node-a")
    line = assert_exit_2(
        run("agent", "run", "--url", api.url, "--token-file", str(limited), "--host", "node-b"),
        REFUSED,
    )
    assert "node-a" in line
    assert agents_of(admin, "node-b") == []


def test_a_server_with_its_own_agent_refuses_node_agents(
    server: ServerProcess, cthm: Callable[..., Result], tmp_path: Path
) -> None:
    token = token_file(cthm, tmp_path)
    line = assert_exit_2(
        run("agent", "run", "--url", server.url, "--token-file", str(token), "--host", "node-x"),
        "the API refused the agent",
    )
    assert "--no-agent" in line


def test_run_registers_reports_and_stops_on_sigterm(
    api: ServerProcess, admin: Callable[..., Result], tmp_path: Path
) -> None:
    host = host_name()
    token = token_file(admin, tmp_path, host=host)
    with FakeHost(host, tmp_path / "host") as node:
        agent = node.start_agent(api.url, token, report_interval=0.5)
        # The backend is chosen once the API named the deployment: the next report says it.
        (shown,) = wait_for(
            f"{host} registered, with its backend",
            lambda: [a for a in agents_of(admin, host) if a["configurations"].get("backend")],
            agent=agent,
        )
        assert shown["id"] == node_agent_id(host)
        assert (shown["host"], shown["alive"]) == (host, True)
        config = shown["configurations"]
        assert (config["backend"], config["chosen_by"]) == ("nftables", "configuration")
        registered = f"cthm agent of host {host} registered with {api.url} (backend nftables)"
        wait_for(
            "the registered line", lambda: registered in agent.stdout_path.read_text(), agent=agent
        )

        # Heartbeats move on.
        first = shown["heartbeat_timestamp"]
        wait_for(
            "a later heartbeat",
            lambda: agents_of(admin, host)[0]["heartbeat_timestamp"] != first,
            agent=agent,
        )

        # A live agent is forgotten only by force, and registers again at its next report.
        assert_error(admin("agent", "delete", shown["id"]), 1, "alive")
        forced = admin("agent", "delete", shown["id"], "--force")
        assert forced.stdout.strip() == f"Deleted agent {shown['id']}", forced
        wait_for(f"{host} registered again", lambda: agents_of(admin, host), agent=agent)

        stop_cleanly(agent)

    # Dead after the down time; then it is deleted without force, and stays gone.
    wait_for(f"{host} dead", lambda: not agents_of(admin, host)[0]["alive"], DOWN_TIME + 15)
    deleted = admin("agent", "delete", shown["id"])
    assert deleted.returncode == 0, deleted
    assert agents_of(admin, host) == []
    assert_error(admin("agent", "delete", shown["id"]), 1, shown["id"])


def test_sigterm_while_the_api_cannot_be_reached_exits_0(
    admin: Callable[..., Result], tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: it retries registering
    host = host_name()
    token = token_file(admin, tmp_path, host=host)
    with FakeHost(host, tmp_path / "host") as node:
        agent = node.start_agent(nowhere, token)
        wait_for(
            "a failed registration",
            lambda: "cannot register with the API" in agent.stderr_path.read_text(),
            agent=agent,
        )
        assert agent.alive(), agent.log_tail()
        stop_cleanly(agent)
        assert "registered" not in agent.stdout_path.read_text()


# --- the node agent's own metrics -------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of a Prometheus text answer."""
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


@pytest.mark.kernel
def test_metrics_listen_serves_the_node_agents_own_metrics(
    api: ServerProcess, admin: Callable[..., Result], tmp_path: Path, netns: NamespaceFactory
) -> None:
    host = host_name()
    token = token_file(admin, tmp_path, host=host)
    namespace = netns.create("nodem")
    router = admin(
        "--json", "router", "create", "nodem", "--project", "p1", "--namespace", namespace
    ).json()["router"]
    created = admin("helper", "create", "nodem", "--protocol", "tcp", "--port", "21",
                    "--helper", "ftp")  # fmt: skip
    assert created.returncode == 0, created
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with FakeHost(host, tmp_path / "host") as node:
        node.add_namespace(namespace, namespace)
        agent = node.start_agent(
            api.url,
            token,
            report_interval=0.5,
            resync_interval=1.0,  # the usage is read after each resync
            extra_args=("--metrics-listen", str(port)),
        )
        usage = (
            "cthm_binding_helper_connections",
            (("helper", "ftp"), ("port", "21"), ("protocol", "tcp"), ("router", router["id"])),
        )

        def scraped() -> dict[Any, float] | None:
            try:
                found = scrape(url)
            except httpx.TransportError:  # not listening yet
                return None
            return found if usage in found else None

        found = wait_for("the router's usage in the agent's metrics", scraped, agent=agent)
        assert found[usage] == 0.0
        full = ("cthm_agent_sync_duration_seconds_count", (("kind", "full"),))
        assert found[full] >= 1
        assert ("cthm_agent_queue_depth", ()) in found
        assert ("cthm_agent_sync_failures_total", (("backend", "nftables"),)) not in found
        assert ("cthm_agent_drift_repairs_total", ()) in found
        # No database here: the API's census is not the node agent's to show.
        assert not [name for name, _ in found if name == "cthm_routers"]
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404

        # The same reading reaches the API in the agent's kernel summaries: kernel_state
        # shows it for the node agent's router.
        def reported() -> Any:
            response = httpx.get(
                f"{api.url}/v2.0/routers/{router['id']}/kernel_state",
                headers={"X-Auth-Token": api.admin_token},
                timeout=5,
            )
            desired = response.json()["kernel_state"]["desired"]
            return desired if desired and desired[0].get("usage") is not None else None

        (row,) = wait_for("the usage in kernel_state", reported, agent=agent)
        assert row["usage"] == {"connections": 0, "expectations": 0}
        stop_cleanly(agent)
    with pytest.raises(httpx.TransportError):  # the listener ended with the agent
        httpx.get(url, timeout=2)


def test_metrics_listen_refuses_a_bad_address() -> None:
    assert_error(
        run("agent", "run", "--metrics-listen", "nowhere:9", token="cthm_x"),
        2,
        "--metrics-listen",
    )
