"""The catalog helpers no packaged peer fits — irc, sane, amanda, netbios-ns, snmp — proven with
scripted exchanges of their real messages (peers_catalog.py) through the traffic topology's
strict router, bound through the API of a real `cthm serve` on both backends.

Each test runs its exchange twice on one router: first without the binding (the control flow
works, the protocol's second flow fails at the router), then with the binding POSTed to the API
(the second flow works, and `conntrack -L expect` in the router, read while the expectation
lives, shows the one the helper created). The router's forward firewall accepts only new
connections to the protocol's control port (added to the topology's firewall per test);
everything else must be `related`.

- irc (tcp/6667, NAT: nf_nat_irc): the client's DCC SEND names its own address; the helper
  expects the DCC connection to the router's public address and rewrites the offer to name it.
- sane (tcp/6566, no NAT part): the SANE_NET_START reply names the scanner's data port; the
  helper expects the client's data connection to it.
- amanda (udp/10080, NAT: nf_nat_amanda): the REP's `CONNECT DATA p MESG p INDEX p` gives three
  expectations; the requester's connection to DATA passes.
- netbios-ns (udp/137) and snmp (udp/161): the kernel helpers act only on broadcasts the router
  itself sends (nf_conntrack_broadcast: locally generated, to a broadcast address of one of its
  interfaces), expecting unicast replies from the subnet; so they are proven with output
  bindings, a query from the router namespace and its strict INPUT firewall; an ingress binding
  of either is shown to give no expectation.
- snmp's NAT part (nf_nat_snmp_basic) rewrites IpAddress values equal to the client's address in
  messages through the NAT: a SetRequest carrying the client's address arrives at the agent
  naming the router's public address only with an (ingress) binding. It creates no expectation.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from bindings_api import ApiRouter, expectations
from catalog_binding import allow_new_from_client, require_kernel_modules
from peer_process import PeerProcess

from cthm.testing import (
    ServerProcess,
    Topology,
    conntrack_flush,
    install_router_input_firewall,
    run_in_namespace,
)

pytestmark = [pytest.mark.kernel, pytest.mark.traffic, pytest.mark.catalog]

PEERS = Path(__file__).with_name("peers_catalog.py")
EVENT_TIMEOUT = 8.0  # the first event of a peer includes `ip netns exec` and a Python start
STEP_TIMEOUT = 10.0  # a later event; every wait inside a peer is shorter than this
PEER_WAIT = "8"  # seconds a peer waits for what must come (a packet, a connection, a command)
FLOW_WAIT = "1"  # seconds for the second flow, which fails without the helper: a drop costs this
PAYLOAD = 4096


@pytest.fixture
def edge(service: ServerProcess, topology: Topology) -> ApiRouter:
    """The topology's router, registered with the server (no binding yet)."""
    return ApiRouter(service, topology)


def expect_lines(topology: Topology, helper: str) -> list[str]:
    """The router's expectations created by `helper`. Read once, after a peer reported the
    packet that creates them: the helper ran on it in the router before it was delivered."""
    listing = expectations(topology.router_ns)
    return [line for line in listing.splitlines() if f"helper={helper}" in line]


def peer(namespace: str, role: str, *args: str) -> PeerProcess:
    return PeerProcess(
        namespace, PEERS, role, "--timeout", PEER_WAIT, "--flow-timeout", FLOW_WAIT, *args
    )


# --- irc -------------------------------------------------------------------------------------


def irc_round(t: Topology) -> dict[str, Any]:
    """A DCC SEND offer from the client, and the server's connection to the offered address
    (then, if that failed, to the router's public address on the offered port)."""
    conntrack_flush(t.router_ns)
    seen: dict[str, Any] = {}
    server = peer(t.server_ns, "irc-server", "--host", t.server_addr, "--port", "6667")
    with server:
        server.event("listening", EVENT_TIMEOUT)
        client_args = ["--server", t.server_addr, "--port", "6667", "--own-ip", t.client_addr]
        client_args += ["--dcc-port", "5000", "--size", str(PAYLOAD)]
        with peer(t.client_ns, "irc-client", *client_args) as client:
            seen["welcome"] = client.event("offered", EVENT_TIMEOUT)["welcome"]
            seen["dcc"] = dcc = server.event("dcc", STEP_TIMEOUT)
            seen["expect"] = expect_lines(t, "irc")
            server.send(f"connect {dcc['ip']} {dcc['port']}")
            seen["data"] = server.event("dcc-data", STEP_TIMEOUT)
            if seen["data"]["ok"]:
                seen["sent"] = client.event("dcc-sent", STEP_TIMEOUT)
            else:
                server.send(f"connect {t.router_server_addr} {dcc['port']}")
                seen["public"] = server.event("dcc-data", STEP_TIMEOUT)
    return seen


def test_irc_dcc_send_through_nat_needs_the_binding(edge: ApiRouter, topology: Topology) -> None:
    require_kernel_modules("nf_conntrack_irc", "nf_nat_irc")
    t = topology
    allow_new_from_client(t, "tcp", 6667)

    # Without: the IRC session works, but the offer still names the client's private address,
    # which the server cannot reach, and the router's public address forwards nothing.
    without = irc_round(t)
    assert without["welcome"].startswith(":irc.test 001 alice"), without
    assert without["dcc"]["ip"] == t.client_addr, without
    assert without["expect"] == [], without
    assert without["data"]["ok"] is False, without
    assert without["public"]["ok"] is False, without

    edge.bind([("tcp", 6667, "irc")])
    with_binding = irc_round(t)
    # nf_nat_irc rewrote the offer to the router's public address; the helper expected the
    # DCC connection there, and it reached the client through the strict firewall.
    assert with_binding["dcc"]["ip"] == t.router_server_addr, with_binding
    port = with_binding["dcc"]["port"]
    assert any(
        f"dst={t.router_server_addr}" in line and f"dport={port} " in line
        for line in with_binding["expect"]
    ), with_binding
    assert with_binding["data"] == {
        "event": "dcc-data",
        "ok": True,
        "size": PAYLOAD,
        "intact": True,
    }, with_binding
    assert with_binding["sent"]["peer"] == t.server_addr, with_binding


# --- sane ------------------------------------------------------------------------------------


def data_port_round(t: Topology, protocol: str, port: int, reply: str, key: str) -> dict[str, Any]:
    """`protocol`'s control exchange on `port`, whose answer (the client's `reply` event, kept
    as `key`) names data port 7001; then the client's data connection to that port."""
    conntrack_flush(t.router_ns)
    seen: dict[str, Any] = {}
    server_args = ["--host", t.server_addr, "--port", str(port), "--data-port", "7001"]
    server_args += ["--size", str(PAYLOAD)]
    with peer(t.server_ns, f"{protocol}-server", *server_args) as server:
        server.event("listening", EVENT_TIMEOUT)
        client_args = ["--server", t.server_addr, "--port", str(port)]
        with peer(t.client_ns, f"{protocol}-client", *client_args) as client:
            seen[key] = client.event(reply, EVENT_TIMEOUT)
            seen["expect"] = expect_lines(t, protocol)
            client.send("data")
            seen["data"] = client.event("data", STEP_TIMEOUT)
    return seen


def sane_round(t: Topology) -> dict[str, Any]:
    """INIT and START over the control connection, then the client's data connection."""
    return data_port_round(t, "sane", 6566, "port", "start")


def test_sane_data_connection_needs_the_binding(edge: ApiRouter, topology: Topology) -> None:
    require_kernel_modules("nf_conntrack_sane")
    t = topology
    allow_new_from_client(t, "tcp", 6566)

    # Without: SANE_NET_START is answered with the data port, whose SYN the router drops.
    without = sane_round(t)
    assert (without["start"]["status"], without["start"]["port"]) == (0, 7001), without
    assert without["expect"] == [], without
    assert (without["data"]["ok"], without["data"]["stage"]) == (False, "timeout"), without

    edge.bind([("tcp", 6566, "sane")])
    with_binding = sane_round(t)
    assert any(
        f"src={t.client_addr} dst={t.server_addr}" in line and "dport=7001 " in line
        for line in with_binding["expect"]
    ), with_binding
    assert with_binding["data"] == {"event": "data", "ok": True, "size": PAYLOAD, "intact": True}, (
        with_binding
    )


# --- amanda ----------------------------------------------------------------------------------


def amanda_round(t: Topology) -> dict[str, Any]:
    """REQ and REP over udp/10080, then the requester's connection to the DATA port."""
    return data_port_round(t, "amanda", 10080, "rep", "rep")


def test_amanda_data_connection_needs_the_binding(edge: ApiRouter, topology: Topology) -> None:
    require_kernel_modules("nf_conntrack_amanda", "nf_nat_amanda")
    t = topology
    allow_new_from_client(t, "udp", 10080)

    without = amanda_round(t)
    assert without["rep"]["ports"] == {"DATA": 7001, "MESG": 7002, "INDEX": 7003}, without
    assert without["expect"] == [], without
    assert (without["data"]["ok"], without["data"]["stage"]) == (False, "timeout"), without

    edge.bind([("udp", 10080, "amanda")])
    with_binding = amanda_round(t)
    # One expectation per port the REP names, each for a connection to the responder.
    for port in (7001, 7002, 7003):
        assert any(
            f"dst={t.server_addr}" in line and f"dport={port} " in line
            for line in with_binding["expect"]
        ), (port, with_binding)
    assert with_binding["rep"]["ports"]["DATA"] == 7001, with_binding
    assert with_binding["data"] == {"event": "data", "ok": True, "size": PAYLOAD, "intact": True}, (
        with_binding
    )


# --- netbios-ns and snmp: broadcasts from the router itself ---------------------------------


def with_subnet_broadcast(t: Topology) -> str:
    """Gives the router's server-side address its broadcast address and returns it: the
    broadcast helper looks the packet's destination up among its interface's configured
    broadcast addresses, and the topology's addresses (no `brd`) have none."""
    plen = t.prefix_len
    run_in_namespace(
        t.router_ns,
        ["ip", "-batch", "-"],
        input=f"addr del {t.router_server_addr}/{plen} dev {t.router_server_if}\n"
        f"addr add {t.router_server_addr}/{plen} brd + dev {t.router_server_if}\n",
    )
    return str(ipaddress.ip_network(t.server_net).broadcast_address)


def broadcast_round(t: Topology, protocol: str, port: int, broadcast: str) -> dict[str, Any]:
    """A query broadcast by the router, the responder's unicast answer from `port`."""
    conntrack_flush(t.router_ns)
    seen: dict[str, Any] = {}
    common = ["--port", str(port), "--protocol", protocol]
    with peer(t.server_ns, "bcast-responder", *common, "--own-ip", t.server_addr) as server:
        server.event("listening", EVENT_TIMEOUT)
        query_args = [*common, "--own-ip", t.router_server_addr, "--broadcast", broadcast]
        with peer(t.router_ns, "bcast-query", *query_args) as query:
            seen["sent"] = query.event("sent", EVENT_TIMEOUT)
            seen["query"] = server.event("query", STEP_TIMEOUT)
            # netbios-ns's expectation lives 3 s: read it before the answer.
            seen["expect"] = expect_lines(t, protocol)
            server.send("reply")
            server.event("replied", STEP_TIMEOUT)
            query.send("listen")
            seen["answer"] = query.event("answer", STEP_TIMEOUT)
    return seen


@pytest.mark.parametrize(("helper", "port"), [("netbios-ns", 137), ("snmp", 161)])
def test_broadcast_query_from_the_router_gets_its_answer_only_with_the_binding(
    edge: ApiRouter, topology: Topology, helper: str, port: int
) -> None:
    require_kernel_modules(
        {"netbios-ns": "nf_conntrack_netbios_ns", "snmp": "nf_conntrack_snmp"}[helper]
    )
    t = topology
    install_router_input_firewall(t)
    broadcast = with_subnet_broadcast(t)

    # Without: the query reaches the subnet, the answer (from the responder's own address, not
    # the broadcast address the router's conntrack entry names) is new and dropped.
    without = broadcast_round(t, helper, port, broadcast)
    assert without["query"]["peer"] == t.router_server_addr, without
    assert without["expect"] == [], without
    assert (without["answer"]["ok"], without["answer"]["stage"]) == (False, "timeout"), without

    # An ingress binding does not help: the helper acts only on the router's own broadcasts.
    edge.bind([("udp", port, helper)])
    ingress = broadcast_round(t, helper, port, broadcast)
    assert ingress["expect"] == [], ingress
    assert (ingress["answer"]["ok"], ingress["answer"]["stage"]) == (False, "timeout"), ingress

    edge.bind([("udp", port, helper)], direction="output")
    with_binding = broadcast_round(t, helper, port, broadcast)
    sport = with_binding["sent"]["sport"]
    # Any host of the subnet (mask-src) may answer from `port` to the query's source port.
    assert any(
        f"src={broadcast} dst={t.router_server_addr} sport={port} dport={sport} " in line
        and "mask-src=255.255.255.0 " in line
        for line in with_binding["expect"]
    ), with_binding
    assert with_binding["answer"]["ok"] is True, with_binding
    assert (with_binding["answer"]["peer"], with_binding["answer"]["sport"]) == (
        t.server_addr,
        port,
    ), with_binding


# --- snmp's NAT part ---------------------------------------------------------------------------


def snmp_set_round(t: Topology) -> dict[str, Any]:
    """A SetRequest from the client carrying the client's address, as the agent receives it."""
    conntrack_flush(t.router_ns)
    with peer(t.server_ns, "snmp-sink", "--host", t.server_addr, "--port", "161") as agent:
        agent.event("listening", EVENT_TIMEOUT)
        manager_args = ["--server", t.server_addr, "--port", "161", "--value", t.client_addr]
        with peer(t.client_ns, "snmp-set", *manager_args) as manager:
            manager.event("sent", EVENT_TIMEOUT)
            received = agent.event("received", STEP_TIMEOUT)
    entries = run_in_namespace(
        t.router_ns, ["conntrack", "-L", "-p", "udp", "--orig-port-dst", "161"]
    ).stdout
    return {"received": received, "conntrack": entries}


def test_snmp_nat_rewrites_addresses_inside_messages_only_with_the_binding(
    edge: ApiRouter, topology: Topology
) -> None:
    require_kernel_modules("nf_conntrack_snmp", "nf_nat_snmp_basic")
    t = topology
    allow_new_from_client(t, "udp", 161)

    without = snmp_set_round(t)
    assert without["received"]["ok"] is True, without
    assert without["received"]["peer"] == t.router_server_addr, without  # masqueraded
    assert without["received"]["address"] == t.client_addr, without  # the payload untouched

    edge.bind([("udp", 161, "snmp")])
    with_binding = snmp_set_round(t)
    assert with_binding["received"]["address"] == t.router_server_addr, with_binding
    assert "helper=snmp" in with_binding["conntrack"], with_binding
