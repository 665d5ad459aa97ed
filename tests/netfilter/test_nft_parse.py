"""Parsing nft's JSON back into a KernelTable, including everything cthm would not render.

The JSON samples are nft 1.0.6's own output on this kernel (copied from `nft -j list table`);
tests/netfilter/test_nft_agree.py checks the same shapes against the live kernel.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.domain import KERNEL_HELPERS, Assignment, Protocol
from cthm.netfilter import (
    FakeNftables,
    HelperObject,
    NftablesBackend,
    NftOther,
    desired_table,
    parse_table,
)
from cthm.netfilter.parse import table_comment

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


def listing(*items: dict[str, Any]) -> str:
    return json.dumps({"nftables": [META, *items]})


FTP = helper("ftp-tcp", "ftp", "tcp")
TFTP = helper("tftp-udp", "tftp", "udp")
CLEAN = [TABLE, FTP, TFTP, CHAIN, map_rule("tcp", [[21, "ftp-tcp"], [2121, "ftp-tcp"]])]
CLEAN.append(map_rule("udp", [[69, "tftp-udp"]]))


def test_clean_table() -> None:
    table = parse_table(listing(*CLEAN))
    wanted = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
    assert table == desired_table(wanted)
    assert table is not None
    assert table.assignments == tuple(sorted(wanted))


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
    table = parse_table(listing(TABLE, nbns, CHAIN, map_rule("udp", [[137, "netbios-ns-udp"]])))
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
            {"chain": {**CHAIN["chain"], "prio": -300}},
            map_rule("tcp", [[21, "ftp-tcp"]]),
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
            {"chain": {**CHAIN["chain"], "policy": "drop"}},
            map_rule("tcp", [[21, "ftp-tcp"]]),
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
        [TABLE, FTP, CHAIN, map_rule("tcp", [[21, "ftp-tcp"]], comment="mine")],
        [
            "rule in chain prerouting that cthm did not render: "
            'ct helper set tcp dport map { 21 : ftp-tcp }, comment "mine"',
            "ct helper ftp-tcp is not used by any cthm rule",
        ],
    ),
    "second map for a protocol": (
        [*CLEAN, map_rule("tcp", [[990, "ftp-tcp"]])],
        [
            "rule in chain prerouting that cthm did not render: "
            "ct helper set tcp dport map { 990 : ftp-tcp }"
        ],
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
        [TABLE, helper("myftp", "ftp", "tcp"), CHAIN, map_rule("tcp", [[21, "myftp"]])],
        ["ct helper myftp should be named ftp-tcp (its content)"],
    ),
    "unknown object kind": (
        [*CLEAN, {"set": {"family": "inet", "name": "ports", "table": "cthm", "handle": 30}}],
        ["set ports (cthm renders no set)"],
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
