"""The faults several hosts must survive, each with real agents on fake hosts, a real API and
real nftables: the API restarting or unreachable, an agent killed, a namespace moving to
another host, and the watch connection cut mid-stream. The agents' periodic resync is longer
than any test (cluster.RESYNC_INTERVAL): what reaches the kernel came through the watch and the
re-lists, never through the safety net."""

from __future__ import annotations

import re
import threading
import time

from hosts.cluster import (
    HOST_A,
    HOST_B,
    REPORT_INTERVAL,
    Cluster,
    Relay,
    dumps,
    kernel_ports,
    poll,
)
from support.faults import kernel_table, table_handle

FTP = ("tcp", 21, "ftp")
TFTP = ("udp", 69, "tftp")

RETRY_LOG = re.compile(r"listing again in|unavailable|retry|retrying|backoff", re.I)
"""What an agent that cannot reach the API writes to its log (any of these words)."""


def test_changes_around_an_api_restart_all_reach_the_kernel(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.add_host(HOST_A)
    cluster.add_host(HOST_B)
    single = cluster.place("one", [HOST_A])
    ha = cluster.place("ha", [HOST_A, HOST_B])
    agents = [cluster.start_agent(HOST_A), cluster.start_agent(HOST_B)]
    cluster.create_router(single, [FTP])
    cluster.create_router(ha, [FTP, TFTP])
    cluster.wait_settled([single, ha])
    ha_ftp = next(b["id"] for b in cluster.api_bindings(ha) if b["port"] == 21)

    # Just before the restart (the API stops at once after answering) ...
    cluster.add_binding(single, "tcp", 2121, "ftp")
    cluster.add_binding(ha, "udp", 6969, "tftp")
    cluster.restart_server()
    # ... and just after it, while the agents are still reconnecting.
    cluster.add_binding(single, "tcp", 2122, "ftp")
    cluster.delete_binding(ha, ha_ftp)

    cluster.wait_settled([single, ha])
    assert kernel_ports(single.real[HOST_A]) == {
        ("tcp", 21, "ftp"),
        ("tcp", 2121, "ftp"),
        ("tcp", 2122, "ftp"),
    }
    for host in (HOST_A, HOST_B):
        assert kernel_ports(ha.real[host]) == {("udp", 69, "tftp"), ("udp", 6969, "tftp")}
    # The same agent processes did it: they survived the restart, not restarted by us.
    assert all(agent.alive() for agent in agents), cluster.explain()


def test_the_api_stops_promptly_and_cleanly_while_agents_watch(cluster: Cluster) -> None:
    # A long poll (25 s) must not hold the API's shutdown up, nor end in a 500.
    cluster.start_server()
    cluster.add_host(HOST_A)
    router = cluster.place("stop", [HOST_A])
    agent = cluster.start_agent(HOST_A)
    cluster.create_router(router, [FTP])
    cluster.wait_settled([router])
    poll(
        lambda: bool(
            (cluster.agent_body(HOST_A) or {})
            .get("configurations", {})
            .get("watch", {})
            .get("connected")
        ),
        10,
        "the agent watching",
        cluster.explain,
    )
    time.sleep(0.5)  # its long poll is waiting now
    took = cluster.stop_server()
    assert "Traceback" not in cluster.last_server_stderr, cluster.last_server_stderr[-4000:]
    assert took < 5.0, f"the API took {took:.1f}s to stop\n{cluster.last_server_stderr[-2000:]}"
    assert " 500 " not in agent.log_tail(10**9), agent.log_tail()


def test_an_agent_cut_off_leaves_the_kernel_as_is_and_catches_up(cluster: Cluster) -> None:
    server = cluster.start_server()
    cluster.add_host(HOST_A)
    relay = cluster.relay()
    router = cluster.place("cut", [HOST_A])
    real = router.real[HOST_A]
    agent = cluster.start_agent(HOST_A, url=relay.url)
    cluster.create_router(router, [FTP, TFTP])
    cluster.wait_settled([router])
    table, handle = kernel_table(real), table_handle(real)
    log_before = len(agent.log_tail(10**9))

    relists = _relists(cluster)
    # The API stops: the agent keeps retrying, and the kernel keeps the helpers (traffic too).
    cluster.stop_server()
    poll(
        lambda: RETRY_LOG.search(agent.log_tail(10**9)[log_before:]) is not None,
        15,
        "the agent logs that it retries",
        cluster.explain,
    )
    time.sleep(3 * REPORT_INTERVAL)  # several heartbeats and watch attempts fail meanwhile
    assert agent.alive(), agent.log_tail()
    assert kernel_table(real) == table
    assert table_handle(real) == handle, "the table was rewritten while the API was away"

    # The API is back: a change made after it restarted reaches the kernel.
    server.start()
    cluster.add_binding(router, "tcp", 2121, "ftp")
    cluster.wait_settled([router])
    poll(lambda: _relists(cluster) > relists, 10, "the agent re-listed", cluster.explain)

    # A partition (every connection refused) while bindings are deleted and added.
    relay.block()
    tftp = next(b["id"] for b in cluster.api_bindings(router) if b["port"] == 69)
    cluster.delete_binding(router, tftp)
    cluster.add_binding(router, "udp", 6969, "tftp")
    time.sleep(2 * REPORT_INTERVAL)
    assert ("udp", 69, "tftp") in kernel_ports(real), "the kernel changed with no API"
    relay.unblock()
    cluster.wait_settled([router])
    assert kernel_ports(real) == {("tcp", 21, "ftp"), ("tcp", 2121, "ftp"), ("udp", 6969, "tftp")}
    assert agent.alive(), agent.log_tail()


def test_a_killed_agent_is_dead_soon_and_catches_up_when_back(cluster: Cluster) -> None:
    cluster.start_server(3.0)  # agent_down_time 3 s
    cluster.add_host(HOST_A)
    router = cluster.place("kill", [HOST_A])
    agent = cluster.start_agent(HOST_A)
    cluster.create_router(router, [FTP, TFTP])
    cluster.wait_settled([router])
    body = cluster.agent_body(HOST_A)
    assert body is not None
    assert body["alive"] is True, dumps(body)

    agent.kill()
    took = poll(
        lambda: (cluster.agent_body(HOST_A) or {}).get("alive") is False,
        10,
        "the killed agent shown dead",
        cluster.explain,
    )
    assert took <= 7.0, f"dead after {took:.1f}s with agent_down_time 3"
    poll(
        lambda: f"host {HOST_A}: agent dead" in cluster.router(router)["status_reason"],
        5,
        "the router names the dead host",
        lambda: dumps(cluster.router(router)),
    )
    assert cluster.router(router)["status"] == "ERROR"
    [entry] = cluster.kernel_state(router)["hosts"]
    assert entry["host"] == HOST_A
    assert entry["agent_alive"] is False, dumps(entry)

    # Changes while it is down: nobody applies them ...
    ftp = next(b["id"] for b in cluster.api_bindings(router) if b["port"] == 21)
    cluster.delete_binding(router, ftp)
    cluster.add_binding(router, "tcp", 2121, "ftp")
    time.sleep(1.0)
    assert ("tcp", 21, "ftp") in kernel_ports(router.real[HOST_A])
    # ... until it is back: then every one is applied, and it is alive again.
    cluster.start_agent(HOST_A)
    cluster.wait_settled([router])
    assert kernel_ports(router.real[HOST_A]) == {("tcp", 2121, "ftp"), ("udp", 69, "tftp")}
    poll(
        lambda: (cluster.agent_body(HOST_A) or {}).get("alive") is True,
        10,
        "the agent alive again",
        cluster.explain,
    )


def test_a_namespace_moving_to_another_host_is_followed(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.add_host(HOST_A)
    cluster.add_host(HOST_B)
    router = cluster.place("move", [HOST_A])
    cluster.start_agent(HOST_A)
    cluster.start_agent(HOST_B)
    cluster.create_router(router, [FTP, TFTP])
    cluster.wait_settled([router])
    assert cluster.router(router)["hosts"] == [HOST_A]

    # Failover: the namespace goes from A ...
    cluster.hosts[HOST_A].remove_namespace(router.namespace)
    poll(
        lambda: cluster.router(router)["hosts"] == [],
        10,
        "A no longer places the router",
        lambda: dumps(cluster.router(router)),
    )
    # ... and comes up, fresh and empty, on B: B applies it.
    fresh = cluster.netns.create("moved")
    cluster.hosts[HOST_B].add_namespace(router.namespace, fresh)
    router.real = {HOST_B: fresh}
    poll(
        lambda: cluster.router(router)["hosts"] == [HOST_B],
        10,
        "B places the router",
        lambda: dumps(cluster.router(router)),
    )
    cluster.wait_settled([router])
    assert kernel_ports(fresh) == {("tcp", 21, "ftp"), ("udp", 69, "tftp")}
    state = cluster.kernel_state(router)
    assert [entry["host"] for entry in state["hosts"]] == [HOST_B], dumps(state)


def test_a_watch_cut_mid_stream_loses_nothing_and_applies_nothing_twice(
    cluster: Cluster,
) -> None:
    cluster.start_server()
    cluster.add_host(HOST_A)
    relay = cluster.relay()
    routers = [cluster.place(f"w{index}", [HOST_A]) for index in range(3)]
    agent = cluster.start_agent(HOST_A, url=relay.url)
    for router in routers:
        cluster.create_router(router, [FTP])
    cluster.wait_settled(routers)
    writes = {router.namespace: cluster.table_writes(router, HOST_A) for router in routers}
    changes = dict.fromkeys(writes, 0)

    with Cutter(relay) as cutter:
        for step in range(6):
            for router in routers:
                cluster.add_binding(router, "tcp", 3000 + step, "ftp")
                changes[router.namespace] += 1
            time.sleep(0.15)
    assert cutter.connections >= 3, f"the relay cut only {cutter.connections} connections"

    cluster.wait_settled(routers)
    for router in routers:
        want = {("tcp", 21, "ftp")} | {("tcp", 3000 + step, "ftp") for step in range(6)}
        assert kernel_ports(router.real[HOST_A]) == want
    # Nothing applied twice: each router's table was rewritten at most once per change (the
    # kernel's own count; several changes may coalesce into one apply).
    applied = {name: monitor.count() for name, monitor in writes.items()}
    for name, count in applied.items():
        assert 1 <= count <= changes[name], f"{applied} for changes {changes}"

    # Resuming (and re-listing) with nothing changed rewrites nothing.
    relists = _relists(cluster)
    with Cutter(relay) as cutter:
        poll(lambda: _relists(cluster) > relists, 20, "the agent re-listed", cluster.explain)
        time.sleep(1.0)
    assert cutter.connections >= 3, f"the relay cut only {cutter.connections} connections"
    cluster.wait_settled(routers)
    assert {name: monitor.count() for name, monitor in writes.items()} == applied
    assert agent.alive(), agent.log_tail()


class Cutter:
    """A thread cutting every connection through the relay every 0.1 s, while in `with`."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Cutter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        for _ in range(600):  # bounded: 600 x 0.1 s at most
            if self._stop.wait(0.1):
                return
            self.connections += self.relay.cut()


def _relists(cluster: Cluster) -> int:
    body = cluster.agent_body(HOST_A) or {}
    relists: int = body.get("configurations", {}).get("watch", {}).get("relists", 0)
    return relists
