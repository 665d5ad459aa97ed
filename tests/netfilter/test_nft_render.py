"""Golden rendering: exact transaction text, sorted, and refusal of anything unsafe."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cthm.domain import KERNEL_HELPERS, Assignment, Direction, Protocol
from cthm.netfilter import (
    HelperObject,
    KernelTable,
    Transaction,
    UnsafeValue,
    desired_table,
    helper_object_name,
    render,
    render_delete,
    render_probe,
)
from cthm.netfilter.model import set_name

TCP, UDP = Protocol.TCP, Protocol.UDP
HEAD = "add table inet cthm\ndelete table inet cthm\nadd table inet cthm\n"
CHAIN = (
    "add chain inet cthm prerouting { type filter hook prerouting priority filter; "
    "policy accept; }\n"
)


def a(protocol: Protocol, port: int, helper: str) -> Assignment:
    return Assignment(protocol, port, helper)


def test_empty_renders_an_empty_table() -> None:
    assert str(render([])) == HEAD
    assert desired_table([]) == KernelTable((), frozenset(), ())


def test_golden_ftp_and_tftp() -> None:
    tx = render([a(UDP, 69, "tftp"), a(TCP, 2121, "ftp"), a(TCP, 21, "ftp")])
    assert str(tx) == (
        HEAD
        + 'add ct helper inet cthm ftp-tcp { type "ftp" protocol tcp; l3proto inet; }\n'
        + 'add ct helper inet cthm tftp-udp { type "tftp" protocol udp; l3proto inet; }\n'
        + "add set inet cthm ingress-ftp-tcp { type inet_service; "
        "elements = { 21, 2121 }; }\n" + "add set inet cthm ingress-tftp-udp { type inet_service; "
        "elements = { 69 }; }\n"
        + CHAIN
        + 'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"\n'
        + 'add rule inet cthm prerouting udp dport @ingress-tftp-udp ct helper set "tftp-udp"\n'
    )
    assert len(tx) == 10


def test_golden_h323_sip_and_ipv4_only_helpers() -> None:
    tx = render(
        [
            a(UDP, 5060, "sip"),
            a(TCP, 5060, "sip"),
            a(UDP, 1719, "RAS"),
            a(TCP, 1720, "Q.931"),
            a(UDP, 137, "netbios-ns"),
            a(TCP, 6667, "irc"),
        ]
    )
    assert str(tx) == (
        HEAD
        + 'add ct helper inet cthm irc-tcp { type "irc" protocol tcp; l3proto inet; }\n'
        + 'add ct helper inet cthm netbios-ns-udp { type "netbios-ns" protocol udp; '
        "l3proto inet; }\n"
        + 'add ct helper inet cthm Q.931-tcp { type "Q.931" protocol tcp; l3proto inet; }\n'
        + 'add ct helper inet cthm RAS-udp { type "RAS" protocol udp; l3proto inet; }\n'
        + 'add ct helper inet cthm sip-tcp { type "sip" protocol tcp; l3proto inet; }\n'
        + 'add ct helper inet cthm sip-udp { type "sip" protocol udp; l3proto inet; }\n'
        + "add set inet cthm ingress-irc-tcp { type inet_service; "
        "elements = { 6667 }; }\n"
        + "add set inet cthm ingress-netbios-ns-udp { type inet_service; "
        "elements = { 137 }; }\n" + "add set inet cthm ingress-Q.931-tcp { type inet_service; "
        "elements = { 1720 }; }\n" + "add set inet cthm ingress-RAS-udp { type inet_service; "
        "elements = { 1719 }; }\n" + "add set inet cthm ingress-sip-tcp { type inet_service; "
        "elements = { 5060 }; }\n" + "add set inet cthm ingress-sip-udp { type inet_service; "
        "elements = { 5060 }; }\n"
        + CHAIN
        + 'add rule inet cthm prerouting tcp dport @ingress-irc-tcp ct helper set "irc-tcp"\n'
        + "add rule inet cthm prerouting udp dport @ingress-netbios-ns-udp "
        'ct helper set "netbios-ns-udp"\n'
        + 'add rule inet cthm prerouting tcp dport @ingress-Q.931-tcp ct helper set "Q.931-tcp"\n'
        + 'add rule inet cthm prerouting udp dport @ingress-RAS-udp ct helper set "RAS-udp"\n'
        + 'add rule inet cthm prerouting tcp dport @ingress-sip-tcp ct helper set "sip-tcp"\n'
        + 'add rule inet cthm prerouting udp dport @ingress-sip-udp ct helper set "sip-udp"\n'
    )


def test_only_protocols_with_assignments_get_a_rule() -> None:
    text = str(render([a(UDP, 69, "tftp")]))
    assert "tcp dport" not in text
    assert text.endswith('udp dport @ingress-tftp-udp ct helper set "tftp-udp"\n')


def test_output_is_independent_of_input_order_and_exact_duplicates() -> None:
    items = [a(TCP, 21, "ftp"), a(UDP, 69, "tftp"), a(TCP, 990, "ftp"), a(UDP, 161, "snmp")]
    reference = str(render(items))
    assert str(render(reversed(items))) == reference
    assert str(render([*items, *items])) == reference
    assert desired_table(reversed(items)) == desired_table(items)


def test_two_helpers_on_one_port_are_refused_at_render_time() -> None:
    tx = render([a(TCP, 21, "ftp"), a(TCP, 21, "irc")])
    assert len(tx) == 0
    with pytest.raises(UnsafeValue, match="tcp port 21 assigned both ftp and irc"):
        str(tx)
    with pytest.raises(UnsafeValue):
        desired_table([a(TCP, 21, "ftp"), a(TCP, 21, "irc")])


def test_same_port_on_two_protocols_is_fine() -> None:
    text = str(render([a(TCP, 5060, "sip"), a(UDP, 5060, "sip")]))
    assert ("add set inet cthm ingress-sip-tcp { type inet_service; elements = { 5060 }; }") in text
    assert ("add set inet cthm ingress-sip-udp { type inet_service; elements = { 5060 }; }") in text


def test_helper_object_names_come_from_content() -> None:
    assert helper_object_name("ftp", TCP) == "ftp-tcp"
    assert helper_object_name("Q.931", TCP) == "Q.931-tcp"
    assert helper_object_name("RAS", UDP) == "RAS-udp"
    assert helper_object_name("netbios-ns", UDP) == "netbios-ns-udp"
    names = {helper_object_name(s.name, p) for s in KERNEL_HELPERS for p in s.protocols}
    assert len(names) == sum(len(s.protocols) for s in KERNEL_HELPERS)


def test_desired_table_predicts_what_the_kernel_reports() -> None:
    table = desired_table([a(TCP, 21, "ftp"), a(UDP, 137, "netbios-ns"), a(TCP, 21, "ftp")])
    assert table.assignments == (a(TCP, 21, "ftp"), a(UDP, 137, "netbios-ns"))
    assert table.helpers == {
        HelperObject("ftp-tcp", "ftp", TCP, "inet"),
        # no IPv6 netbios-ns helper: the kernel reports the object as `ip`
        HelperObject("netbios-ns-udp", "netbios-ns", UDP, "ip"),
    }
    assert table.garbage == ()
    assert table.clean


def test_render_delete_and_probe() -> None:
    assert str(render_delete()) == "delete table inet cthm\n"
    assert str(render_probe([("tftp", UDP), ("ftp", TCP), ("ftp", TCP)])) == (
        HEAD
        + 'add ct helper inet cthm ftp-tcp { type "ftp" protocol tcp; l3proto inet; }\n'
        + 'add ct helper inet cthm tftp-udp { type "tftp" protocol udp; l3proto inet; }\n'
    )


HOSTILE_HELPERS = [
    'ftp" protocol tcp; } add table ip evil { ',
    "ftp\nflush ruleset",
    "ftp; flush ruleset",
    "$(reboot)",
    "ftp }",
    "",
    "-ftp",
    ".ftp",
    "a" * 16,
    "ftp\x00",
    "ftp\u00e9",
    "ftp`id`",
]


@pytest.mark.parametrize("helper", HOSTILE_HELPERS)
def test_hostile_helper_names_never_reach_the_text(helper: str) -> None:
    tx = render([a(TCP, 21, "ftp"), a(TCP, 22, helper)])
    assert len(tx) == 0
    with pytest.raises(UnsafeValue):
        str(tx)
    with pytest.raises(UnsafeValue):
        str(render_probe([(helper, TCP)]))


@pytest.mark.parametrize(
    "port",
    [0, -1, 65536, 2**40, pytest.param(10**5000, id="huge"), True, "21", 21.0, None],
)
def test_bad_ports_are_refused(port: object) -> None:
    tx = render([a(TCP, 21, "ftp"), Assignment(TCP, port, "ftp")])  # type: ignore[arg-type]
    with pytest.raises(UnsafeValue, match="port"):
        str(tx)


@pytest.mark.parametrize("protocol", ["tcp", "sctp", None, 6])
def test_protocol_must_be_the_enum(protocol: object) -> None:
    tx = render([Assignment(protocol, 21, "ftp")])  # type: ignore[arg-type]
    with pytest.raises(UnsafeValue, match="protocol"):
        str(tx)


def test_non_assignments_are_refused() -> None:
    with pytest.raises(UnsafeValue, match="not an Assignment"):
        str(render([("tcp", 21, "ftp")]))  # type: ignore[list-item]


def test_transaction_keeps_the_first_error_and_stops_growing() -> None:
    tx = Transaction()
    tx.add_table()
    assert tx.add_helper("ftp", TCP) == "ftp-tcp"
    assert tx.add_helper("bad name", TCP) is None
    tx.add_helper_map(TCP, [(70000, "ftp-tcp")])
    tx.add_chain()
    assert len(tx) == 2
    assert tx.error is not None
    assert "bad name" in str(tx.error)
    with pytest.raises(UnsafeValue, match="bad name"):
        tx.check()


def test_transaction_map_needs_known_objects_of_its_protocol() -> None:
    tx = Transaction()
    tx.add_helper("tftp", UDP)
    tx.add_helper_map(TCP, [(21, "tftp-udp")])
    with pytest.raises(UnsafeValue, match="no tcp helper object 'tftp-udp'"):
        str(tx)
    tx = Transaction()
    tx.add_helper("ftp", TCP)
    tx.add_helper_map(TCP, [(21, "ftp-tcp"), (21, "ftp-tcp")])
    with pytest.raises(UnsafeValue, match="mapped twice"):
        str(tx)
    tx = Transaction()
    tx.add_helper_map(TCP, [])
    with pytest.raises(UnsafeValue, match="empty"):
        str(tx)
    tx = Transaction()
    tx.add_helper("ftp", TCP)
    tx.add_helper("ftp", TCP)
    with pytest.raises(UnsafeValue, match="added twice"):
        str(tx)


def test_operations_are_verb_and_object() -> None:
    ops = render([a(TCP, 21, "ftp")]).operations
    assert [op.verb.value for op in ops] == ["add", "delete", "add", "add", "add", "add", "add"]
    assert [op.text() for op in ops][-1] == (
        'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"'
    )


def test_transaction_sets_need_their_helper_and_ports() -> None:
    tx = Transaction()
    tx.add_helper("ftp", TCP)
    assert tx.add_port_set(Direction.INGRESS, "ftp-tcp", [2121, 21]) == "ingress-ftp-tcp"
    tx.add_set_rule("ingress-ftp-tcp")
    assert str(tx).splitlines()[1:] == [
        "add set inet cthm ingress-ftp-tcp { type inet_service; elements = { 21, 2121 }; }",
        'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"',
    ]
    cases: list[tuple[Callable[[Transaction], object], str]] = [
        (lambda t: t.add_port_set(Direction.INGRESS, "irc-tcp", [21]), "no helper object"),
        (lambda t: t.add_port_set(Direction.INGRESS, "ftp-tcp", []), "no ports"),
        (lambda t: t.add_port_set(Direction.INGRESS, "ftp-tcp", [21, 21]), "given twice"),
        (lambda t: t.add_port_set(Direction.INGRESS, "ftp-tcp", [0]), "port 0"),
        (lambda t: t.add_port_set("sideways", "ftp-tcp", [21]), "direction"),  # type: ignore[arg-type]
        (lambda t: t.add_set_rule("output-ftp-tcp"), "no set 'output-ftp-tcp'"),
    ]
    for build, message in cases:
        tx = Transaction()
        tx.add_helper("ftp", TCP)
        build(tx)
        with pytest.raises(UnsafeValue, match=message):
            str(tx)


def test_element_operations_are_checked() -> None:
    tx = Transaction()
    tx.delete_elements(Direction.OUTPUT, "Q.931-tcp", [1720])
    tx.add_elements(Direction.INGRESS, "ftp-tcp", [990, 21])
    assert str(tx) == (
        "delete element inet cthm output-Q.931-tcp { 1720 }\n"
        "add element inet cthm ingress-ftp-tcp { 21, 990 }\n"
    )
    for name, ports in [
        ("ftp-sctp", [21]),
        ("ftp", [21]),
        ('x"; flush ruleset; "-tcp', [21]),
        ("ftp-tcp", [70000]),
        ("ftp-tcp", []),
    ]:
        tx = Transaction()
        tx.add_elements(Direction.INGRESS, name, ports)
        with pytest.raises(UnsafeValue):
            str(tx)


def test_the_owner_is_the_new_tables_comment_and_must_be_a_plain_word() -> None:
    text = str(
        render([Assignment(Protocol.TCP, 21, "ftp")], "6f1d2c3b-0000-4000-8000-0000000000aa")
    )
    assert text.splitlines()[:3] == [
        "add table inet cthm",
        "delete table inet cthm",
        'add table inet cthm { comment "cthm:6f1d2c3b-0000-4000-8000-0000000000aa"; }',
    ]
    for bad in ('x"; flush ruleset; "', "", "a b", "-x", "é"):
        with pytest.raises(UnsafeValue):
            str(render([], bad))


def test_set_names_come_from_direction_and_object_name() -> None:
    assert set_name(Direction.INGRESS, "ftp-tcp") == "ingress-ftp-tcp"
    assert set_name(Direction.OUTPUT, "Q.931-tcp") == "output-Q.931-tcp"
    # Injective: a direction has no '-', so the name splits back at its first '-'.
    names = {
        set_name(direction, helper_object_name(spec.name, protocol))
        for direction in Direction
        for spec in KERNEL_HELPERS
        for protocol in spec.protocols
    }
    assert len(names) == 2 * sum(len(spec.protocols) for spec in KERNEL_HELPERS)
    with pytest.raises(UnsafeValue, match="direction"):
        set_name("sideways", "ftp-tcp")  # type: ignore[arg-type]
