"""Parsing nft's JSON back into a KernelTable, including everything cthm would not render, and
a table of the previous layout (map rules) as the same assignments plus garbage.

The JSON samples are nft 1.0.6's own output on this kernel (copied from `nft -j list table`);
tests/netfilter/test_nft_agree.py checks the same shapes against the live kernel.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import (
    FakeNftables,
    HelperObject,
    NftablesBackend,
    NftOther,
    desired_table,
    parse_table,
)
from cthm.netfilter.model import PREVIOUS_LAYOUT
from cthm.netfilter.parse import parse_set, table_comment

TCP, UDP = Protocol.TCP, Protocol.UDP
META = {
    "metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}
}
TABLE = {"table": {"family": "inet", "name": "cthm", "handle": 18}}
CHAIN = {
    "chain": {
        "family": "inet",
        "table": "cthm",
        "name": "prerouting",
        "handle": 4,
        "type": "filter",
        "hook": "prerouting",
        "prio": 0,
        "policy": "accept",
    }
}


def helper(name: str, kind: str, protocol: str, l3proto: str = "inet") -> dict[str, Any]:
    body = {"family": "inet", "name": name, "table": "cthm", "handle": 1, "type": kind}
    return {"ct helper": {**body, "protocol": protocol, "l3proto": l3proto}}


def map_rule(protocol: str, elements: list[list[Any]], **extra: Any) -> dict[str, Any]:
    key = {"payload": {"protocol": protocol, "field": "dport"}}
    expr = [{"ct helper": {"map": {"key": key, "data": {"set": elements}}}}]
    body = {"family": "inet", "table": "cthm", "chain": "prerouting", "handle": 6}
    return {"rule": {**body, **extra, "expr": expr}}


def rule(expr: list[Any], chain: str = "prerouting", **extra: Any) -> dict[str, Any]:
    body = {"family": "inet", "table": "cthm", "chain": chain, "handle": 9}
    return {"rule": {**body, **extra, "expr": expr}}


def port_set(name: str, ports: list[Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"family": "inet", "name": name, "table": "cthm"}
    body |= {"type": "inet_service", "handle": 5, **extra}
    if ports is not None:
        body["elem"] = ports
    return {"set": body}


def set_rule(
    protocol: str, name: str, helper: str, chain: str = "prerouting", **extra: Any
) -> dict[str, Any]:
    left = {"payload": {"protocol": protocol, "field": "dport"}}
    match = {"match": {"op": "==", "left": left, "right": f"@{name}"}}
    return rule([match, {"ct helper": helper}], chain=chain, **extra)


def listing(*items: dict[str, Any]) -> str:
    return json.dumps({"nftables": [META, *items]})


FTP = helper("ftp-tcp", "ftp", "tcp")
TFTP = helper("tftp-udp", "tftp", "udp")
IRC = helper("irc-tcp", "irc", "tcp")
FTP_SET = port_set("ingress-ftp-tcp", [21, 2121])
CLEAN = [TABLE, FTP, TFTP, FTP_SET, port_set("ingress-tftp-udp", [69]), CHAIN]
CLEAN += [set_rule("tcp", "ingress-ftp-tcp", "ftp-tcp")]
CLEAN += [set_rule("udp", "ingress-tftp-udp", "tftp-udp")]
# The same table in the previous layout: one anonymous map rule per protocol.
OLD = [TABLE, FTP, TFTP, CHAIN, map_rule("tcp", [[21, "ftp-tcp"], [2121, "ftp-tcp"]])]
OLD.append(map_rule("udp", [[69, "tftp-udp"]]))
WANTED = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]


def test_clean_table() -> None:
    table = parse_table(listing(*CLEAN))
    assert table == desired_table(WANTED)
    assert table is not None
    assert table.assignments == tuple(sorted(WANTED))


def test_previous_layout_reads_as_its_assignments_and_garbage() -> None:
    """A table of the previous layout is not clean: the next full sync rewrites it."""
    table = parse_table(listing(*OLD))
    assert table is not None
    assert table.assignments == desired_table(WANTED).assignments
    assert table.helpers == desired_table(WANTED).helpers
    assert table.garbage == (PREVIOUS_LAYOUT,)
    assert table != desired_table(WANTED)


def test_both_layouts_in_one_table_read_together() -> None:
    """Ingress in sets, output still a map rule: all assignments, and the layout's garbage."""
    output = map_rule("tcp", [[21, "ftp-tcp"]]) | {}
    output["rule"]["chain"] = "output"
    out_chain = {"chain": {**CHAIN["chain"], "name": "output", "hook": "output"}}
    table = parse_table(listing(*CLEAN, out_chain, output))
    assert table is not None
    extra = Assignment(TCP, 21, "ftp", Direction.OUTPUT)
    assert table.assignments == desired_table([*WANTED, extra]).assignments
    assert table.garbage == (PREVIOUS_LAYOUT,)


def test_no_table_is_none() -> None:
    assert parse_table(listing()) is None
    other = {"table": {"family": "ip", "name": "cthm", "handle": 3}}
    assert parse_table(listing(other)) is None


def test_empty_table() -> None:
    table = parse_table(listing(TABLE))
    assert table == desired_table([])


def test_items_of_other_tables_are_ignored() -> None:
    foreign = [
        {"table": {"family": "inet", "name": "filter", "handle": 1}},
        {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 1}},
        rule([{"drop": None}], chain="forward") | {},
    ]
    foreign[2]["rule"]["table"] = "filter"
    assert parse_table(listing(*foreign, *CLEAN)) == parse_table(listing(*CLEAN))


def test_ipv4_only_helper_reads_back_as_ip() -> None:
    nbns = helper("netbios-ns-udp", "netbios-ns", "udp", l3proto="ip")
    nbns_set = port_set("ingress-netbios-ns-udp", [137])
    nbns_rule = set_rule("udp", "ingress-netbios-ns-udp", "netbios-ns-udp")
    table = parse_table(listing(TABLE, nbns, nbns_set, CHAIN, nbns_rule))
    assert table == desired_table([Assignment(UDP, 137, "netbios-ns")])
    assert table is not None
    assert HelperObject("netbios-ns-udp", "netbios-ns", UDP, "ip") in table.helpers


GARBAGE_CASES = {
    "extra chain": (
        [*CLEAN, {"chain": {"family": "inet", "table": "cthm", "name": "extra", "handle": 11}}],
        ["chain extra (cthm renders only chains prerouting and output)"],
    ),
    "raw priority": (
        [
            TABLE,
            FTP,
            FTP_SET,
            {"chain": {**CHAIN["chain"], "prio": -300}},
            set_rule("tcp", "ingress-ftp-tcp", "ftp-tcp"),
        ],
        [
            "chain prerouting is type filter hook prerouting prio -300 policy accept; "
            "cthm renders type filter hook prerouting prio 0 policy accept"
        ],
    ),
    "drop policy": (
        [
            TABLE,
            FTP,
            FTP_SET,
            {"chain": {**CHAIN["chain"], "policy": "drop"}},
            set_rule("tcp", "ingress-ftp-tcp", "ftp-tcp"),
        ],
        [
            "chain prerouting is type filter hook prerouting prio 0 policy drop; "
            "cthm renders type filter hook prerouting prio 0 policy accept"
        ],
    ),
    "counter rule": (
        [*CLEAN, rule([{"counter": {"packets": 7, "bytes": 420}}])],
        ["rule in chain prerouting that cthm did not render: counter"],
    ),
    "linear helper rule": (
        [
            *CLEAN,
            rule(
                [
                    {
                        "match": {
                            "op": "==",
                            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                            "right": 21,
                        }
                    },
                    {"ct helper": "ftp-tcp"},
                ]
            ),
        ],
        [
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == 21, ct helper set ftp-tcp"
        ],
    ),
    "rule with comment": (
        [TABLE, FTP, FTP_SET, CHAIN, set_rule("tcp", "ingress-ftp-tcp", "ftp-tcp", comment="m")],
        [
            "rule in chain prerouting that cthm did not render: "
            'tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp, comment "m"',
            "set ingress-ftp-tcp is not used by any cthm rule",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "old map rule with comment": (
        [TABLE, FTP, CHAIN, map_rule("tcp", [[21, "ftp-tcp"]], comment="mine")],
        [
            "rule in chain prerouting that cthm did not render: "
            'ct helper set tcp dport map { 21 : ftp-tcp }, comment "mine"',
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "second map for a protocol": (
        [*OLD, map_rule("tcp", [[990, "ftp-tcp"]])],
        [
            "rule in chain prerouting that cthm did not render: "
            "ct helper set tcp dport map { 990 : ftp-tcp }",
            PREVIOUS_LAYOUT,
        ],
    ),
    "second rule for a set": (
        [*CLEAN, set_rule("tcp", "ingress-ftp-tcp", "ftp-tcp")],
        [
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp"
        ],
    ),
    "set no rule uses": (
        [*CLEAN, port_set("output-ftp-tcp", [21])],
        ["set output-ftp-tcp is not used by any cthm rule"],
    ),
    "empty set": (
        [TABLE, FTP, port_set("ingress-ftp-tcp", None), CHAIN, CLEAN[6]],
        [
            "set ingress-ftp-tcp is empty (cthm renders no empty set)",
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "set of another type": (
        [TABLE, FTP, port_set("ingress-ftp-tcp", ["10.0.0.1"], type="ipv4_addr"), CHAIN, CLEAN[6]],
        [
            "set ingress-ftp-tcp is of type ipv4_addr, not inet_service",
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "set with flags": (
        [TABLE, FTP, port_set("ingress-ftp-tcp", [21], flags=["interval"]), CHAIN, CLEAN[6]],
        [
            "set ingress-ftp-tcp has attributes cthm does not set: flags",
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "set element with a comment": (
        [
            *CLEAN[:3],
            port_set("ingress-ftp-tcp", [{"elem": {"val": 21, "comment": "x"}}]),
            *CLEAN[4:],
        ],
        [
            'set ingress-ftp-tcp holds elements cthm does not write: [{"elem": {"comment": "x", '
            '"val": 21}}]',
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "rule naming a missing set": (
        [TABLE, FTP, CHAIN, CLEAN[6]],
        [
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set ftp-tcp",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "set whose rule gives another helper": (
        [TABLE, FTP, IRC, FTP_SET, CHAIN, set_rule("tcp", "ingress-ftp-tcp", "irc-tcp")],
        [
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @ingress-ftp-tcp, ct helper set irc-tcp",
            "set ingress-ftp-tcp is not used by any cthm rule",
            "ct helper ftp-tcp is not used by any cthm rule",
            "ct helper irc-tcp is not used by any cthm rule",
        ],
    ),
    "set of the other direction": (
        [
            TABLE,
            FTP,
            port_set("output-ftp-tcp", [21]),
            CHAIN,
            set_rule("tcp", "output-ftp-tcp", "ftp-tcp"),
        ],
        [
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @output-ftp-tcp, ct helper set ftp-tcp",
            "set output-ftp-tcp is not used by any cthm rule",
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "port in two sets": (
        [
            *CLEAN,
            IRC,
            port_set("ingress-irc-tcp", [21, 6667]),
            set_rule("tcp", "ingress-irc-tcp", "irc-tcp"),
        ],
        ["ingress tcp port 21 is in two helper rules"],
    ),
    "map to object of the other protocol": (
        [TABLE, TFTP, CHAIN, map_rule("tcp", [[21, "tftp-udp"]])],
        [
            "rule in chain prerouting that cthm did not render: "
            "ct helper set tcp dport map { 21 : tftp-udp }",
            "ct helper tftp-udp is not used by any cthm rule",
        ],
    ),
    "unused object": (
        [*CLEAN, helper("sip-udp", "sip", "udp")],
        ["ct helper sip-udp is not used by any cthm rule"],
    ),
    "misnamed object": (
        [
            TABLE,
            helper("myftp", "ftp", "tcp"),
            port_set("ingress-myftp", [21]),
            CHAIN,
            set_rule("tcp", "ingress-myftp", "myftp"),
        ],
        ["ct helper myftp should be named ftp-tcp (its content)"],
    ),
    "unknown object kind": (
        [*CLEAN, {"map": {"family": "inet", "name": "ports", "table": "cthm", "handle": 30}}],
        ["map ports (cthm renders no map)"],
    ),
    "table flags": (
        [{"table": {**TABLE["table"], "flags": ["dormant"]}}, *CLEAN[1:]],
        ["table has attributes cthm does not set: flags"],
    ),
    "rule in another chain": (
        [
            *CLEAN,
            {"chain": {"family": "inet", "table": "cthm", "name": "x", "handle": 11}},
            rule([{"accept": None}], chain="x"),
        ],
        [
            "chain x (cthm renders only chains prerouting and output)",
            "rule in chain x that cthm did not render: accept",
        ],
    ),
}


@pytest.mark.parametrize("case", GARBAGE_CASES)
def test_garbage_is_described(case: str) -> None:
    items, expected = GARBAGE_CASES[case]
    table = parse_table(listing(*items))
    assert table is not None
    assert list(table.garbage) == expected
    assert not table.clean
    # Garbage never hides: a table with garbage never equals a desired table.
    assert table != desired_table(table.assignments)


def test_counter_values_do_not_change_the_description() -> None:
    one = parse_table(listing(*CLEAN, rule([{"counter": {"packets": 1, "bytes": 2}}])))
    two = parse_table(listing(*CLEAN, rule([{"counter": {"packets": 9, "bytes": 99}}])))
    assert one == two


@pytest.mark.parametrize(
    "text",
    ["", "not json", "[]", '{"nftables": 3}', '{"nftables": [{"a": 1, "b": 2}]}', '{"x": []}'],
)
def test_malformed_json_is_an_nft_error(text: str) -> None:
    with pytest.raises(NftOther, match="unexpected JSON from nft"):
        parse_table(text)


KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]
assignment_lists = st.lists(
    st.builds(
        lambda kind, port: Assignment(kind[1], port, kind[0]),
        st.sampled_from(KINDS),
        st.integers(1, 65535),
    ),
    max_size=30,
    unique_by=lambda x: (x.protocol, x.port),
)


@settings(max_examples=200, deadline=None)
@given(assignment_lists)
def test_parse_render_round_trip_through_the_fake(assignments: list[Assignment]) -> None:
    fake = FakeNftables()
    fake.add_namespace("ns")
    backend = NftablesBackend(fake)
    backend.apply("ns", assignments)
    assert backend.read("ns") == desired_table(assignments)


@pytest.mark.parametrize(
    ("comment", "owner"),
    [
        ("cthm:6f1d2c3b-0000-4000-8000-00000000000a", "6f1d2c3b-0000-4000-8000-00000000000a"),
        ("someone else's", None),
        ('cthm:x" ; flush ruleset', None),
        ("cthm:", None),
    ],
)
def test_table_comment_is_the_owner_where_nft_shows_it(comment: str, owner: str | None) -> None:
    """nft from 1.0.7 shows a table's comment in JSON; only `cthm:<plain id>` names an owner,
    and a comment is never garbage (cthm writes one)."""
    marked = {"table": {**TABLE["table"], "comment": comment}}
    table = parse_table(listing(marked, *CLEAN[1:]))
    assert table is not None
    assert table.owner == owner
    assert table.garbage == ()
    if '"' not in comment:  # nft's syntax has no quote inside a comment
        assert table_comment(f'table inet cthm {{\n\tcomment "{comment}"\n}}\n') == comment
    assert table_comment("table inet cthm {\n}\n") is None


def test_parse_set_reads_one_sets_ports() -> None:
    text = listing(port_set("ingress-ftp-tcp", [2121, 21]))
    assert parse_set(text, "ingress-ftp-tcp") == ((21, 2121), ())


def test_parse_set_describes_what_cthm_does_not_write() -> None:
    odd = port_set("ingress-ftp-tcp", [21, {"elem": {"val": 990, "timeout": 5}}])
    ports, garbage = parse_set(listing(odd), "ingress-ftp-tcp")
    assert ports == (21,)
    assert garbage == (
        'set ingress-ftp-tcp holds elements cthm does not write: [21, {"elem": {"timeout": 5, '
        '"val": 990}}]',
    )
    assert parse_set(listing(port_set("ingress-ftp-tcp", None)), "ingress-ftp-tcp") == (
        (),
        ("set ingress-ftp-tcp is empty (cthm renders no empty set)",),
    )


def test_parse_set_of_a_listing_without_it_is_an_nft_error() -> None:
    with pytest.raises(NftOther, match="set ingress-ftp-tcp missing"):
        parse_set(listing(port_set("ingress-irc-tcp", [21])), "ingress-ftp-tcp")


def test_assignments_shared_between_reads_keep_each_listing_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read-back assignments are one object per value, shared with desired tables
    (model.shared_assignment): a port read with one helper in a listing and another in the
    next reads as each, also past the bound."""
    irc = helper("irc-tcp", "irc", "tcp", "ip")  # IPv4 only, as render writes it
    irc_on_21 = [TABLE, irc, port_set("ingress-irc-tcp", [21, 2121]), CHAIN]
    irc_on_21.append(set_rule("tcp", "ingress-irc-tcp", "irc-tcp"))
    irc_wanted = [Assignment(TCP, 21, "irc"), Assignment(TCP, 2121, "irc")]
    for bound in (1 << 16, 2):
        monkeypatch.setattr("cthm.netfilter.model._MAX_SHARED", bound)
        for _ in range(2):
            assert parse_table(listing(*CLEAN)) == desired_table(WANTED)
            assert parse_table(listing(*irc_on_21)) == desired_table(irc_wanted)
    monkeypatch.setattr("cthm.netfilter.model._MAX_SHARED", 1 << 16)
    read, wanted = parse_table(listing(*CLEAN)), desired_table(WANTED)
    assert read is not None
    assert all(a is b for a, b in zip(read.assignments, wanted.assignments, strict=True))
