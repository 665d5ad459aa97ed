"""Live helper usage in kernel_state (issue 16): each desired binding's conntrack entries and
expectations, read from the kernel of the router's namespace when kernel_state is asked.

Real app, real store, a real agent over the real nftables backend, real traffic: an FTP control
connection inside a namespace this test creates, held open after a PORT command so the ftp
helper's expectation of the data connection is pending while kernel_state is read.
"""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cthm.agent import Agent, LocalStoreSource
from cthm.agent.usage import UsageRefresher
from cthm.api import create_app
from cthm.netfilter import HelperUsage, NftablesBackend, make_runner, read_usage
from cthm.testing import NamespaceFactory

from .conftest import fast_authenticator
from .support import JSON, Api, TestClient, issue_token, make_settings, make_store

# Runs in the namespace: a server on 127.0.0.1:21 and a client of it. The ftp helper parses a
# line only after an earlier one in the same direction (its newline tracking), so USER first;
# then PORT makes the helper expect the data connection. Held until stdin closes.
FTP_CONTROL = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 21))
server.listen()
client = socket.create_connection(("127.0.0.1", 21), timeout=5)
peer, _ = server.accept()
peer.settimeout(5)
for line in (b"USER anonymous\\r\\n", b"PORT 127,0,0,1,200,10\\r\\n"):
    client.sendall(line)
    peer.recv(100)
    peer.sendall(b"200 ok\\r\\n")
    client.recv(100)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def agent_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Api, Agent]]:
    """The app as `cthm serve` wires it with its agent: kernel_state and helper_usage."""
    settings = make_settings(tmp_path_factory.mktemp("helper-usage"))
    store = make_store(settings)
    backend = NftablesBackend(make_runner("auto"))
    agent = Agent(LocalStoreSource(store), backend, settings.catalog(), sweep_orphans=False)
    app = create_app(
        settings,
        store,
        kernel_state=agent.kernel_state,
        helper_usage=agent.helper_usage,
        authenticator=fast_authenticator(),
    )
    client = TestClient(app)
    token = issue_token(store, "admin", ["admin"])
    try:
        yield Api(client=client, store=store, token=token, admin_token=token), agent
    finally:
        client.close()
        agent.stop()
        backend.close()
        store.close()


@pytest.fixture
def ftp_control() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by the test, ended (by their pid) whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait(timeout=10)


def hold_ftp_control(namespace: str, started: list[subprocess.Popen[str]]) -> None:
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", FTP_CONTROL],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 15)
    line = process.stdout.readline() if ready else ""
    assert line.strip() == "ready", f"ftp control did not start: {line!r}"


def kernel_state(api: Api, router_id: str) -> JSON:
    response = api.get(f"/v2.0/routers/{router_id}/kernel_state")
    assert response.status_code == 200, response.text
    body: JSON = response.json()["kernel_state"]
    return body


def usage_by_port(body: JSON) -> dict[int, object]:
    return {row["port"]: row["usage"] for row in body["desired"]}


@pytest.mark.kernel
@pytest.mark.traffic
def test_an_ftp_control_connection_in_flight_shows_its_connection_and_expectation(
    agent_api: tuple[Api, Agent],
    netns: NamespaceFactory,
    ftp_control: list[subprocess.Popen[str]],
) -> None:
    api, agent = agent_api
    namespace = netns.create("usage")
    router = api.create_router(name="edge", project_id="p1", namespace=namespace)
    # Traffic made inside the namespace leaves by the output hook: output bindings.
    api.create_helper(router["id"], "tcp", 21, "ftp", direction="output")
    api.create_helper(router["id"], "udp", 69, "tftp", direction="output")
    agent.sync_all()

    idle = kernel_state(api, router["id"])
    assert idle["in_sync"] is True, idle
    assert idle["usage_error"] is None
    assert usage_by_port(idle) == {
        21: {"connections": 0, "expectations": 0},
        69: {"connections": 0, "expectations": 0},
    }

    hold_ftp_control(namespace, ftp_control)
    busy = kernel_state(api, router["id"])
    assert busy["usage_error"] is None
    assert usage_by_port(busy) == {
        21: {"connections": 1, "expectations": 1},
        69: {"connections": 0, "expectations": 0},
    }


def test_an_unreadable_namespace_gives_null_usage_and_a_reason(
    agent_api: tuple[Api, Agent],
) -> None:
    api, _agent = agent_api
    router = api.create_router(name="edge", project_id="p1", namespace="cthm-nowhere-usage")
    api.create_helper(router["id"], "tcp", 21, "ftp")

    body = kernel_state(api, router["id"])
    assert [row["usage"] for row in body["desired"]] == [None]
    assert "cthm-nowhere-usage" in body["usage_error"], body["usage_error"]


def test_a_router_without_bindings_reads_nothing(agent_api: tuple[Api, Agent]) -> None:
    api, _agent = agent_api
    router = api.create_router(name="edge", project_id="p1", namespace="cthm-nowhere-usage")
    body = kernel_state(api, router["id"])
    assert (body["desired"], body["usage_error"]) == ([], None)


def usage_series(text: str, router_id: str) -> dict[tuple[str, str, str, str], float]:
    """(metric, helper, protocol, port) -> value of the router's usage gauges in a scrape."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("cthm_binding_helper_connections", "cthm_binding_helper_expectations"):
            for sample in family.samples:
                if sample.labels["router"] == router_id:
                    labels = sample.labels
                    key = (family.name, labels["helper"], labels["protocol"], labels["port"])
                    found[key] = sample.value
    return found


@pytest.mark.kernel
@pytest.mark.traffic
def test_usage_metrics_show_the_last_read_and_drop_deleted_bindings(
    agent_api: tuple[Api, Agent],
    netns: NamespaceFactory,
    ftp_control: list[subprocess.Popen[str]],
) -> None:
    api, agent = agent_api
    namespace = netns.create("usagem")
    router = api.create_router(name="edge", project_id="p1", namespace=namespace)
    api.create_helper(router["id"], "tcp", 21, "ftp", direction="output")
    tftp = api.create_helper(router["id"], "udp", 69, "tftp", direction="output")
    agent.sync_all()
    hold_ftp_control(namespace, ftp_control)

    # Nothing read yet: a scrape runs no conntrack, so it shows nothing for the router.
    assert usage_series(api.get("/metrics").text, router["id"]) == {}
    assert agent.usage.refresh() == [router["id"]]
    conn, expect = "cthm_binding_helper_connections", "cthm_binding_helper_expectations"
    assert usage_series(api.get("/metrics").text, router["id"]) == {
        (conn, "ftp", "tcp", "21"): 1.0,
        (expect, "ftp", "tcp", "21"): 1.0,
        (conn, "tftp", "udp", "69"): 0.0,
        (expect, "tftp", "udp", "69"): 0.0,
    }

    deleted = api.delete(f"/v2.0/routers/{router['id']}/conntrack_helpers/{tftp['id']}")
    assert deleted.status_code == 204, deleted.text
    agent.sync_all()
    agent.usage.refresh()
    assert set(usage_series(api.get("/metrics").text, router["id"])) == {
        (conn, "ftp", "tcp", "21"),
        (expect, "ftp", "tcp", "21"),
    }


@pytest.mark.kernel
def test_usage_refresh_is_bounded_round_robin_and_shows_no_stale_figures(
    agent_api: tuple[Api, Agent], netns: NamespaceFactory
) -> None:
    api, agent = agent_api
    routers = []
    for name in ("rra", "rrb"):
        router = api.create_router(name=name, project_id="p1", namespace=netns.create(name))
        api.create_helper(router["id"], "tcp", 21, "ftp")
        routers.append(router)
    bare = api.create_router(name="bare", project_id="p1", namespace=netns.create("rrc"))
    agent.sync_all()
    read: list[str] = []

    def counted(namespace: str) -> HelperUsage:
        read.append(namespace)
        return read_usage(namespace)

    one_a_pass = UsageRefresher(agent.book, counted, per_pass=1)
    passes = [one_a_pass.refresh() for _ in range(3)]
    # One router a pass, every router with bindings in turn; one without is never read.
    assert [len(p) for p in passes] == [1, 1, 1]
    assert {p[0] for p in passes} == {r["id"] for r in routers}
    assert passes[2] == passes[0]
    assert bare["namespace"] not in read
    text = api.get("/metrics").text
    assert all(usage_series(text, r["id"]) for r in routers)

    # A namespace that cannot be read any more: its router's figures go, not kept stale.
    first = next(r for r in routers if r["id"] == passes[1][0])
    netns.delete(first["namespace"])
    assert one_a_pass.refresh() == [first["id"]]
    assert usage_series(api.get("/metrics").text, first["id"]) == {}
