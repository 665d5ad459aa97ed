"""Two hosts (fake network nodes, a mount namespace each), an agent on each, the API outside,
real nftables in real namespaces: a router is applied exactly where its namespace is, an HA
router on every host holding it, and its status is ACTIVE only once every copy is applied."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hosts.cluster import (
    HOST_A,
    HOST_B,
    Cluster,
    PlacedRouter,
    dumps,
    head_revision,
    kernel_ports,
    poll,
    watch_events,
)
from support.faults import kernel_table

FTP = ("tcp", 21, "ftp")
TFTP = ("udp", 69, "tftp")


def test_a_router_on_one_host_is_applied_there_only(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.add_host(HOST_A)
    cluster.add_host(HOST_B)
    only_a = cluster.place("one", [HOST_A])
    on_b = cluster.place("bee", [HOST_B])  # B has work of its own: its agent is shown working
    cluster.start_agent(HOST_A)
    agent_b = cluster.start_agent(HOST_B)
    cluster.create_router(only_a, [FTP])
    cluster.create_router(on_b, [TFTP])
    cluster.wait_settled([only_a, on_b])

    assert cluster.router(only_a)["hosts"] == [HOST_A]
    assert cluster.router(on_b)["hosts"] == [HOST_B]
    # B's kernel holds B's router only: its table has tftp, not A's ftp.
    b_table = kernel_table(on_b.real[HOST_B])
    assert b_table is not None
    assert {a.helper for a in b_table.assignments} == {"tftp"}

    # B's view before A's router changes: its agent has reported after settling.
    settled_at = datetime.now(UTC)
    before = cluster.wait_agent_report_after(HOST_B, settled_at)["configurations"]
    a_before = cluster.wait_agent_report_after(HOST_A, settled_at)["configurations"]
    revision = head_revision(cluster)

    ports = [2121, 2122, 2123]
    made = [cluster.add_binding(only_a, "tcp", port, "ftp") for port in ports]
    cluster.delete_binding(only_a, made[0])
    cluster.wait_settled([only_a, on_b])
    changed_at = datetime.now(UTC)

    # The feed sends B nothing of A's router; A gets every change.
    assert watch_events(cluster, revision, HOST_B) == []
    to_a = watch_events(cluster, revision, HOST_A)
    assert {e["router_id"] for e in to_a} == {only_a.id}
    # B's agent did no work: no event reached it, nothing applied, and it never asked for
    # A's router (its log names every request it makes) ...
    after = cluster.wait_agent_report_after(HOST_B, changed_at)["configurations"]
    assert after["watch"]["events"] == before["watch"]["events"], dumps([before, after])
    assert after["counts"]["applied"] == before["counts"]["applied"], dumps([before, after])
    assert only_a.id not in agent_b.log_tail(10**9)
    assert kernel_table(on_b.real[HOST_B]) == b_table
    # ... while A's counters moved (they count what they claim to).
    a_after = cluster.wait_agent_report_after(HOST_A, changed_at)["configurations"]
    assert a_after["watch"]["events"] > a_before["watch"]["events"], dumps([a_before, a_after])
    assert a_after["counts"]["applied"] > a_before["counts"]["applied"], dumps(a_after)


def test_an_ha_router_is_active_only_when_every_host_applied_it(cluster: Cluster) -> None:
    cluster.start_server()
    cluster.add_host(HOST_A)
    cluster.add_host(HOST_B)
    ha = cluster.place("ha", [HOST_A, HOST_B])
    assert ha.real[HOST_A] != ha.real[HOST_B]  # two copies: two kernel namespaces
    cluster.start_agent(HOST_A)
    agent_b = cluster.start_agent(HOST_B)
    cluster.create_router(ha, [FTP, TFTP])
    cluster.wait_settled([ha])  # both kernels hold the bindings, and the router is ACTIVE
    assert cluster.router(ha)["hosts"] == [HOST_A, HOST_B]

    # B's agent stops (cleanly): B still places the router, so a change applied on A alone
    # does not make it ACTIVE, and the reason names B.
    assert agent_b.stop() == 0, agent_b.log_tail()
    cluster.add_binding(ha, "tcp", 2121, "ftp")
    poll(
        lambda: ("tcp", 2121, "ftp") in kernel_ports(ha.real[HOST_A]),
        30,
        "A's kernel has the new binding",
        cluster.explain,
    )
    # A reported it (its host entry is at the new revision) ...
    revision = cluster.router(ha)["revision_number"]
    poll(
        lambda: _host_entry(cluster, ha, HOST_A).get("revision_number") == revision,
        30,
        "A reported the new revision",
        cluster.explain,
    )
    # ... and B has not: the router is not ACTIVE, and says why.
    router = cluster.router(ha)
    assert router["status"] != "ACTIVE", dumps(router)
    assert f"host {HOST_B}: " in router["status_reason"], dumps(router)
    assert cluster.router(ha)["hosts"] == [HOST_A, HOST_B]

    # B comes back: it applies, and only then is the router ACTIVE.
    cluster.start_agent(HOST_B)
    cluster.wait_settled([ha])

    state = cluster.kernel_state(ha)
    hosts = {entry["host"]: entry for entry in state["hosts"]}
    assert sorted(hosts) == [HOST_A, HOST_B], dumps(state)
    for entry in hosts.values():
        assert entry["in_sync"] is True, dumps(state)
        assert entry["table_present"] is True, dumps(state)
        assert entry["agent_alive"] is True, dumps(state)
        assert entry["status"] == "ACTIVE", dumps(state)
        assert entry["revision_number"] == cluster.router(ha)["revision_number"], dumps(state)
        assert entry["missing"] == [], dumps(state)
        assert entry["unexpected"] == [], dumps(state)
    assert state["in_sync"] is True, dumps(state)

    agents = {a["host"]: a for a in cluster.get_json("/v2.0/agents")["agents"]}
    assert {HOST_A, HOST_B} <= set(agents), dumps(agents)
    assert agents[HOST_A]["alive"] is True, dumps(agents)
    assert agents[HOST_B]["alive"] is True, dumps(agents)


def _host_entry(cluster: Cluster, router: PlacedRouter, host: str) -> dict[str, Any]:
    for entry in cluster.kernel_state(router)["hosts"]:
        if entry["host"] == host:
            found: dict[str, Any] = entry
            return found
    return {}
