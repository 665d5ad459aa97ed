"""Direction in the nftables backend, pure parts: the output chain rendered (golden text), read
back from nft's JSON, and everything unexpected about it reported as garbage. The same shapes are
checked against the real kernel in test_nft_agree.py and test_direction_kernel.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import (
    FakeNftables,
    NftablesBackend,
    Transaction,
    UnsafeValue,
    desired_table,
    parse_table,
    render,
)
from cthm.netfilter.model import PREVIOUS_LAYOUT

TCP, UDP = Protocol.TCP, Protocol.UDP
IN, OUT = Direction.INGRESS, Direction.OUTPUT
HEAD = "add table inet cthm\ndelete table inet cthm\nadd table inet cthm\n"
PREROUTING = (
    "add chain inet cthm prerouting { type filter hook prerouting priority filter; "
    "policy accept; }\n"
)
OUTPUT = "add chain inet cthm output { type filter hook output priority filter; policy accept; }\n"
FTP_OBJECT = 'add ct helper inet cthm ftp-tcp { type "ftp" protocol tcp; l3proto inet; }\n'
IRC_OBJECT = 'add ct helper inet cthm irc-tcp { type "irc" protocol tcp; l3proto inet; }\n'
TFTP_OBJECT = 'add ct helper inet cthm tftp-udp { type "tftp" protocol udp; l3proto inet; }\n'

MIXED = [
    Assignment(UDP, 69, "tftp", OUT),
    Assignment(TCP, 21, "irc", OUT),
    Assignment(TCP, 2121, "ftp"),
    Assignment(TCP, 21, "ftp"),
]


def test_golden_mixed_directions_share_helper_objects() -> None:
    tx = render(MIXED)
    assert str(tx) == (
        HEAD
        + FTP_OBJECT
        + IRC_OBJECT
        + TFTP_OBJECT
        + "add set inet cthm ingress-ftp-tcp { type inet_service; "
        "elements = { 21, 2121 }; }\n" + "add set inet cthm output-irc-tcp { type inet_service; "
        "elements = { 21 }; }\n" + "add set inet cthm output-tftp-udp { type inet_service; "
        "elements = { 69 }; }\n"
        + PREROUTING
        + 'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"\n'
        + OUTPUT
        + 'add rule inet cthm output tcp dport @output-irc-tcp ct helper set "irc-tcp"\n'
        + 'add rule inet cthm output udp dport @output-tftp-udp ct helper set "tftp-udp"\n'
    )
    assert len(tx) == 14


def test_golden_output_only_has_no_prerouting_chain() -> None:
    text = str(render([Assignment(TCP, 21, "ftp", OUT)]))
    assert text == (
        HEAD + FTP_OBJECT + "add set inet cthm output-ftp-tcp { type inet_service; "
        "elements = { 21 }; }\n"
        + OUTPUT
        + 'add rule inet cthm output tcp dport @output-ftp-tcp ct helper set "ftp-tcp"\n'
    )


def test_one_object_serves_both_chains() -> None:
    text = str(render([Assignment(TCP, 21, "ftp"), Assignment(TCP, 21, "ftp", OUT)]))
    assert text.count("add ct helper") == 1
    assert (
        'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"' in text
    )
    assert 'add rule inet cthm output tcp dport @output-ftp-tcp ct helper set "ftp-tcp"' in text


def test_ingress_only_text_is_unchanged_by_explicit_direction() -> None:
    implicit = [Assignment(TCP, 21, "ftp"), Assignment(UDP, 69, "tftp")]
    explicit = [Assignment(TCP, 21, "ftp", IN), Assignment(UDP, 69, "tftp", IN)]
    assert str(render(explicit)) == str(render(implicit))
    assert "output" not in str(render(implicit))


def test_same_port_may_have_a_helper_per_direction_but_one_per_direction() -> None:
    both = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 21, "irc", OUT)]
    assert desired_table(both).assignments == tuple(both)
    tx = render([*both, Assignment(TCP, 21, "ftp", OUT)])
    assert len(tx) == 0
    with pytest.raises(UnsafeValue, match="output tcp port 21 assigned both irc and ftp"):
        str(tx)
    with pytest.raises(UnsafeValue, match="ingress tcp port 21 assigned both ftp and irc"):
        desired_table([both[0], Assignment(TCP, 21, "irc")])


def test_order_is_protocol_port_direction_whatever_the_input_order() -> None:
    table = desired_table(MIXED)
    assert table.assignments == (
        Assignment(TCP, 21, "ftp"),
        Assignment(TCP, 21, "irc", OUT),
        Assignment(TCP, 2121, "ftp"),
        Assignment(UDP, 69, "tftp", OUT),
    )
    assert str(render(reversed(MIXED))) == str(render(MIXED))
    assert str(render([*MIXED, *MIXED])) == str(render(MIXED))


@pytest.mark.parametrize("direction", ["output", None, 1, "OUTPUT"])
def test_direction_must_be_the_enum(direction: object) -> None:
    tx = render([Assignment(TCP, 21, "ftp", direction)])  # type: ignore[arg-type]
    with pytest.raises(UnsafeValue, match="direction"):
        str(tx)
    with pytest.raises(UnsafeValue, match="direction"):
        desired_table([Assignment(TCP, 21, "ftp", direction)])  # type: ignore[arg-type]


def test_transaction_refuses_an_unknown_direction() -> None:
    tx = Transaction()
    tx.add_helper("ftp", TCP)
    tx.add_chain("sideways")  # type: ignore[arg-type]
    with pytest.raises(UnsafeValue, match="direction 'sideways'"):
        tx.check()
    tx = Transaction()
    tx.add_helper("ftp", TCP)
    tx.add_helper_map(TCP, [(21, "ftp-tcp")], "sideways")  # type: ignore[arg-type]
    with pytest.raises(UnsafeValue, match="direction 'sideways'"):
        tx.check()


# -- parsing nft's JSON ----------------------------------------------------------------------

META = {
    "metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}
}
TABLE = {"table": {"family": "inet", "name": "cthm", "handle": 18}}


def chain(name: str, hook: str, prio: int = 0, policy: str = "accept") -> dict[str, Any]:
    body = {"family": "inet", "table": "cthm", "name": name, "handle": 4, "type": "filter"}
    return {"chain": {**body, "hook": hook, "prio": prio, "policy": policy}}


def helper(name: str, kind: str, protocol: str, l3proto: str = "inet") -> dict[str, Any]:
    body = {"family": "inet", "name": name, "table": "cthm", "handle": 1, "type": kind}
    return {"ct helper": {**body, "protocol": protocol, "l3proto": l3proto}}


def map_rule(chain_name: str, protocol: str, elements: list[list[Any]]) -> dict[str, Any]:
    key = {"payload": {"protocol": protocol, "field": "dport"}}
    expr = [{"ct helper": {"map": {"key": key, "data": {"set": elements}}}}]
    return {
        "rule": {"family": "inet", "table": "cthm", "chain": chain_name, "handle": 6, "expr": expr}
    }


def port_set(name: str, ports: list[int]) -> dict[str, Any]:
    body = {"family": "inet", "name": name, "table": "cthm", "type": "inet_service"}
    return {"set": {**body, "handle": 2, "elem": ports}}


def set_rule(
    chain_name: str, protocol: str, helper_name: str, direction: str | None = None
) -> dict[str, Any]:
    direction = direction or ("ingress" if chain_name == "prerouting" else "output")
    left = {"payload": {"protocol": protocol, "field": "dport"}}
    right = f"@{direction}-{helper_name}"
    expr = [{"match": {"op": "==", "left": left, "right": right}}, {"ct helper": helper_name}]
    return {
        "rule": {"family": "inet", "table": "cthm", "chain": chain_name, "handle": 6, "expr": expr}
    }


def listing(*items: dict[str, Any]) -> str:
    return json.dumps({"nftables": [META, *items]})


FTP, IRC = helper("ftp-tcp", "ftp", "tcp"), helper("irc-tcp", "irc", "tcp", "ip")
PRE, OUTC = chain("prerouting", "prerouting"), chain("output", "output")
BOTH = [
    TABLE,
    FTP,
    IRC,
    PRE,
    OUTC,
    set_rule("prerouting", "tcp", "ftp-tcp"),
    set_rule("output", "tcp", "irc-tcp"),
    port_set("ingress-ftp-tcp", [21]),
    port_set("output-irc-tcp", [21, 6667]),
]
BOTH_ASSIGNMENTS = [
    Assignment(TCP, 21, "ftp"),
    Assignment(TCP, 21, "irc", OUT),
    Assignment(TCP, 6667, "irc", OUT),
]


def test_parse_reads_the_output_chain_as_output_assignments() -> None:
    table = parse_table(listing(*BOTH))
    assert table == desired_table(BOTH_ASSIGNMENTS)
    assert table is not None
    assert [a.direction for a in table.assignments] == [IN, OUT, OUT]


def test_parse_output_only() -> None:
    items = [TABLE, IRC, OUTC, set_rule("output", "tcp", "irc-tcp")]
    items.append(port_set("output-irc-tcp", [6667]))
    assert parse_table(listing(*items)) == desired_table([Assignment(TCP, 6667, "irc", OUT)])


OUTPUT_GARBAGE = {
    "output chain at raw priority": (
        [*BOTH[:4], chain("output", "output", prio=-300), *BOTH[5:]],
        [
            "chain output is type filter hook output prio -300 policy accept; "
            "cthm renders type filter hook output prio 0 policy accept"
        ],
    ),
    "output chain on another hook": (
        [*BOTH[:4], chain("output", "postrouting"), *BOTH[5:]],
        [
            "chain output is type filter hook postrouting prio 0 policy accept; "
            "cthm renders type filter hook output prio 0 policy accept"
        ],
    ),
    "output chain with drop policy": (
        [*BOTH[:4], chain("output", "output", policy="drop"), *BOTH[5:]],
        [
            "chain output is type filter hook output prio 0 policy drop; "
            "cthm renders type filter hook output prio 0 policy accept"
        ],
    ),
    "empty output chain": (
        [TABLE, FTP, PRE, OUTC, BOTH[5], BOTH[7]],
        ["chain output is empty (cthm renders no empty chain)"],
    ),
    "second output rule for a set": (
        [*BOTH, set_rule("output", "tcp", "irc-tcp")],
        [
            "rule in chain output that cthm did not render: "
            "tcp dport == @output-irc-tcp, ct helper set irc-tcp"
        ],
    ),
    "output set used in prerouting": (
        [
            *BOTH,
            port_set("output-ftp-tcp", [990]),
            set_rule("prerouting", "tcp", "ftp-tcp", "output"),
        ],
        [
            "rule in chain prerouting that cthm did not render: "
            "tcp dport == @output-ftp-tcp, ct helper set ftp-tcp",
            "set output-ftp-tcp is not used by any cthm rule",
        ],
    ),
    "output map rule of the previous layout": (
        [TABLE, IRC, OUTC, map_rule("output", "tcp", [[21, "irc-tcp"]])],
        [PREVIOUS_LAYOUT],
    ),
    "extra chain": (
        [*BOTH, chain("input", "input")],
        ["chain input (cthm renders only chains prerouting and output)"],
    ),
}


@pytest.mark.parametrize("case", OUTPUT_GARBAGE)
def test_output_garbage_is_described(case: str) -> None:
    items, expected = OUTPUT_GARBAGE[case]
    table = parse_table(listing(*items))
    assert table is not None
    assert list(table.garbage) == expected
    assert table != desired_table(table.assignments)


def test_a_set_in_the_output_chain_counts_per_direction() -> None:
    """A tcp set rule in each chain is two rules cthm writes, each naming its direction's set."""
    table = parse_table(listing(*BOTH))
    assert table is not None
    assert table.clean


# -- the fake ---------------------------------------------------------------------------------

KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]
mixed_lists = st.lists(
    st.builds(
        lambda kind, port, direction: Assignment(kind[1], port, kind[0], direction),
        st.sampled_from(KINDS),
        st.integers(1, 65535),
        st.sampled_from([IN, OUT]),
    ),
    max_size=30,
    unique_by=lambda x: (x.protocol, x.port, x.direction),
)


@settings(max_examples=150, deadline=None)
@given(mixed_lists, mixed_lists)
def test_fake_round_trip_with_both_directions(
    first: list[Assignment], second: list[Assignment]
) -> None:
    fake = FakeNftables()
    fake.add_namespace("ns")
    backend = NftablesBackend(fake)
    backend.apply("ns", first)
    assert backend.read("ns") == desired_table(first)
    backend.apply("ns", second)
    assert backend.read("ns") == desired_table(second)
