"""The full sync's fast paths give exactly what the general code gives (issue 14):
render's objects and lines made once per kind, parse_table's check of a listing as a whole
against what render writes (_as_rendered, else the general walk), and the one-pass check of
assignments already in order. Each is compared with the general code it stands in for."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import FakeNftables, UnsafeValue, desired_table, render
from cthm.netfilter.model import CHAINS, helper_object_name, set_name
from cthm.netfilter.parse import _as_rendered, _loads, _parse_items, parse_table
from cthm.netfilter.transaction import Transaction

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-0000000000aa"
KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]
assignment_lists = st.lists(
    st.builds(
        lambda kind, port, direction: Assignment(kind[1], port, kind[0], direction),
        st.sampled_from(KINDS),
        st.integers(1, 65535),
        st.sampled_from(list(Direction)),
    ),
    max_size=25,
    unique_by=lambda x: (x.protocol, x.port, x.direction),
)


def reference(assignments: list[Assignment], owner: str | None) -> Transaction:
    """render() as it was before its fast path: every operation through the Transaction's
    checked methods."""
    tx = Transaction()
    tx.add_table()
    tx.delete_table()
    tx.add_table(owner)
    wanted = sorted(assignments, key=lambda a: (a.protocol, a.port, a.direction))
    if not wanted:
        return tx
    kinds = {(a.helper, a.protocol) for a in wanted}
    order = {
        kind: (helper_object_name(*kind).casefold(), helper_object_name(*kind)) for kind in kinds
    }
    for kind in sorted(kinds, key=order.__getitem__):
        tx.add_helper(*kind)
    sets: dict[tuple[Direction, str], list[int]] = {}
    for a in wanted:
        sets.setdefault((a.direction, helper_object_name(a.helper, a.protocol)), []).append(a.port)
    ordered = sorted(sets, key=lambda k: (set_name(*k).casefold(), set_name(*k)))
    for direction, helper_name in ordered:
        tx.add_port_set(direction, helper_name, sets[(direction, helper_name)])
    for direction in CHAINS:
        in_chain = [key for key in ordered if key[0] is direction]
        if in_chain:
            tx.add_chain(direction)
            for key in in_chain:
                tx.add_set_rule(set_name(*key))
    return tx


@settings(max_examples=150, deadline=None)
@given(assignment_lists, st.sampled_from([None, OWNER]))
def test_render_is_the_checked_transaction(
    assignments: list[Assignment], owner: str | None
) -> None:
    tx = render(assignments, owner)
    expected = reference(assignments, owner)
    assert str(tx) == str(expected)
    assert tx.operations == expected.operations
    assert str(tx) == "".join(op.text() + "\n" for op in tx.operations)
    # Operations added after render's are checked against the objects it added.
    for direction, helper_name in {
        (a.direction, helper_object_name(a.helper, a.protocol)) for a in assignments
    }:
        tx.add_elements(direction, helper_name, [1])
        expected.add_elements(direction, helper_name, [1])
    if assignments:
        a = assignments[0]
        tx.add_set_rule(set_name(a.direction, helper_object_name(a.helper, a.protocol)))
        tx.add_helper(a.helper, a.protocol)  # added twice: refused, as by the reference
        expected.add_set_rule(set_name(a.direction, helper_object_name(a.helper, a.protocol)))
        expected.add_helper(a.helper, a.protocol)
    assert repr(tx.error) == repr(expected.error)
    if tx.error is None:
        assert str(tx) == str(expected)


BAD_IN_ORDER: dict[str, list[Any]] = {
    "port 0": [Assignment(TCP, 0, "ftp")],
    "port 70000": [Assignment(TCP, 21, "ftp"), Assignment(TCP, 70000, "ftp")],
    "bool port": [Assignment(TCP, True, "ftp")],
    "str port": [Assignment(TCP, "21", "ftp")],  # type: ignore[arg-type]
    "quote in helper": [Assignment(TCP, 21, "ftp"), Assignment(TCP, 22, 'x"; flush ruleset')],
    "long helper": [Assignment(TCP, 21, "h" * 16)],
    "helper not a str": [Assignment(TCP, 21, 7)],  # type: ignore[arg-type]
    "protocol a str": [Assignment("tcp", 21, "ftp")],  # type: ignore[arg-type]
    "direction a str": [Assignment(TCP, 21, "ftp", "sideways")],  # type: ignore[arg-type]
    "two helpers on a port": [Assignment(TCP, 21, "ftp"), Assignment(TCP, 21, "irc")],
    "not an assignment": [Assignment(TCP, 21, "ftp"), ("tcp", 22, "ftp")],
}


@pytest.mark.parametrize("case", BAD_IN_ORDER)
def test_values_in_order_are_still_checked(case: str) -> None:
    for assignments in (BAD_IN_ORDER[case], tuple(BAD_IN_ORDER[case])):
        with pytest.raises(UnsafeValue):
            str(render(assignments))
        with pytest.raises(UnsafeValue):
            desired_table(assignments)


def test_in_order_input_with_exact_duplicates_renders_once() -> None:
    one = Assignment(TCP, 21, "ftp")
    assert str(render([one, Assignment(TCP, 21, "ftp")])) == str(render([one]))
    assert desired_table((one, one)) == desired_table([one])


def rendered_listing(assignments: list[Assignment], owner: str | None = None) -> str:
    fake = FakeNftables()
    fake.add_namespace("ns")
    fake.run("ns", str(render(assignments, owner)))
    return fake.run("ns", "list table inet cthm", json=True)


@settings(max_examples=150, deadline=None)
@given(assignment_lists)
def test_a_rendered_listing_is_read_as_a_whole(assignments: list[Assignment]) -> None:
    items = _loads(rendered_listing(assignments))
    fast = _as_rendered(items)
    assert fast is not None
    assert fast == _parse_items(items) == desired_table(assignments)


def _mutations(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Listings that differ from `items` in one way each."""
    out: list[list[dict[str, Any]]] = []

    def edited(index: int, change: Any) -> None:
        copy = json.loads(json.dumps(items))
        ((kind, body),) = copy[index].items()
        change(kind, body, copy)
        out.append(copy)

    for i, item in enumerate(items):
        ((kind, body),) = item.items()
        out.append(items[:i] + items[i + 1 :])  # dropped
        out.append([*items[: i + 1], json.loads(json.dumps(item)), *items[i + 1 :]])  # twice
        edited(i, lambda k, b, c: b.update(comment="x"))
        edited(i, lambda k, b, c: b.update(family="ip"))
        edited(i, lambda k, b, c: b.update(table="other"))
        if kind == "set":
            edited(i, lambda k, b, c: b["elem"].append(b["elem"][0]))
            edited(i, lambda k, b, c: b["elem"].append(True))
            edited(i, lambda k, b, c: b["elem"].append(0))
            edited(i, lambda k, b, c: b["elem"].append(70000))
            edited(i, lambda k, b, c: b.update(elem=[]))
            edited(i, lambda k, b, c: b.update(type="ipv4_addr"))
            edited(i, lambda k, b, c: b.update(name=b["name"] + "x"))
            # A port of another set of the same direction and protocol.
            for other in items:
                ((other_kind, other_body),) = other.items()
                if other_kind == "set" and other_body["name"] != body["name"]:
                    port = other_body["elem"][0]
                    edited(i, lambda k, b, c, port=port: b["elem"].append(port))
        elif kind == "ct helper":
            edited(i, lambda k, b, c: b.update(name=b["name"].upper()))
            edited(i, lambda k, b, c: b.update(protocol="sctp"))
            edited(i, lambda k, b, c: b.update(l3proto="ip6"))
        elif kind == "chain":
            edited(i, lambda k, b, c: b.update(prio=-300))
            edited(i, lambda k, b, c: b.update(policy="drop"))
            edited(i, lambda k, b, c: b.update(hook="input"))
        elif kind == "rule":
            edited(
                i,
                lambda k, b, c: b.update(
                    chain="output" if b["chain"] != "output" else "prerouting"
                ),
            )
            edited(i, lambda k, b, c: b["expr"].append({"counter": None}))
            edited(i, lambda k, b, c: b["expr"][0]["match"].update(op="!="))
            edited(
                i, lambda k, b, c: b["expr"][0]["match"]["left"]["payload"].update(field="sport")
            )
            edited(i, lambda k, b, c: b["expr"][1].update({"ct helper": "ftp-udp"}))
            for other in items:
                ((other_kind, other_body),) = other.items()
                if other_kind == "set":
                    name = "@" + other_body["name"]
                    edited(i, lambda k, b, c, name=name: b["expr"][0]["match"].update(right=name))
        elif kind == "table":
            edited(i, lambda k, b, c: b.update(flags=["dormant"]))
    out.append([*items, {"table": {"family": "ip", "name": "filter", "handle": 1}}])
    out.append([*items, {"chain": {"family": "ip", "table": "filter", "name": "x", "handle": 2}}])
    return out


@settings(max_examples=40, deadline=None)
@given(assignment_lists.filter(bool))
def test_any_other_listing_reads_as_the_general_walk_says(assignments: list[Assignment]) -> None:
    items = _loads(rendered_listing(assignments, OWNER))
    for mutated in _mutations(items):
        text = json.dumps({"nftables": mutated})
        general = _parse_items(_loads(text))
        assert parse_table(text) == general
        fast = _as_rendered(_loads(text))
        assert fast is None or fast == general
