"""Router and HelperBinding construction, and the constructors the API uses (new_router,
new_binding, check_binding_fields), table-driven with hostile inputs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cthm.domain import (
    NAMESPACE_PREFIX,
    Assignment,
    Direction,
    HelperBinding,
    HelperCatalog,
    InvalidInput,
    Protocol,
    Router,
    Status,
    assignments_for,
    check_binding_fields,
    default_namespace,
    new_binding,
    new_router,
    parse_direction,
)

MESSAGE_MAX = 300
LONG = "a" * 10_000
RID = str(uuid.UUID(int=1))
BID = str(uuid.UUID(int=2))
HOSTILE_TEXT = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a|b",
    "a && b",
    "'",
    '"',
    "a\nb",
    "a\x00b",
    "a\u202eb",
    "a\u200bb",
    LONG,
]


def assert_clean_refusal(exc: InvalidInput, field: str) -> None:
    assert exc.field == field
    message = str(exc)
    assert len(message) <= MESSAGE_MAX, message[:200]
    assert message.isprintable(), repr(message)


def router(**overrides: Any) -> Router:
    fields: dict[str, Any] = {"id": RID, "name": "r1", "project_id": "p1", "namespace": "ns1"}
    fields.update(overrides)
    return Router(**fields)


def binding(**overrides: Any) -> HelperBinding:
    fields: dict[str, Any] = {
        "id": BID,
        "router_id": RID,
        "project_id": "p1",
        "protocol": Protocol.TCP,
        "port": 21,
        "helper": "ftp",
    }
    fields.update(overrides)
    return HelperBinding(**fields)


# --- Router ------------------------------------------------------------------------------


def test_router_defaults() -> None:
    r = router()
    assert (r.status, r.status_reason, r.revision_number) == (Status.PENDING, "", 0)
    assert r.created_at is None
    assert r.updated_at is None


ROUTER_BAD: list[tuple[str, object]] = [
    *[("id", v) for v in ["", "r1", "urn:" + "0" * 32, "\n" + "0" * 31, LONG, None, 1]],
    *[("name", v) for v in ["a\nb", "a\x00b", "a\u202eb", "a\u200bb", "n" * 256, LONG, None]],
    *[("project_id", v) for v in ["", "-p", "p q", *HOSTILE_TEXT, None]],
    *[("namespace", v) for v in ["", "-ns", ".ns", "..", "a/b", *HOSTILE_TEXT, None]],
    ("status", "ACTIVE"),  # a plain string is not a Status
    ("status", "x" * 10_000),
    ("status", None),
    ("status_reason", None),
    ("status_reason", 7),
]


@pytest.mark.parametrize(("field", "value"), ROUTER_BAD)
def test_router_refuses(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        router(**{field: value})
    assert_clean_refusal(info.value, field)


def test_router_names_may_hold_metacharacters_and_emoji() -> None:
    # Names are data shown to people; only namespaces become argv words.
    assert router(name="; rm -rf / \U0001f680").name == "; rm -rf / \U0001f680"


def test_router_is_frozen() -> None:
    r = router()
    with pytest.raises(AttributeError):
        r.namespace = "other"  # type: ignore[misc]


# --- HelperBinding -----------------------------------------------------------------------


def test_binding_defaults() -> None:
    b = binding()
    assert (b.status, b.status_reason, b.revision_number) == (Status.PENDING, "", 0)


BINDING_BAD: list[tuple[str, object]] = [
    *[("id", v) for v in ["", "b1", "{" + BID + "}", LONG, None]],
    *[("router_id", v) for v in ["", "r1", "; rm -rf /", LONG, None]],
    *[("project_id", v) for v in ["", "-p", *HOSTILE_TEXT, None]],
    ("protocol", "tcp"),  # a plain string is not a Protocol
    ("protocol", "sctp"),
    ("protocol", 6),
    ("protocol", None),
    ("protocol", "x" * 10_000),
    *[("port", v) for v in [0, -1, 65536, 2**64, 10**5000, True, 21.0, "21", None]],
    ("helper", ""),
    ("helper", None),
    ("helper", 21),
    ("status", "PENDING"),
    ("status", None),
]


@pytest.mark.parametrize(("field", "value"), BINDING_BAD)
def test_binding_refuses(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        binding(**{field: value})
    assert_clean_refusal(info.value, field)


# --- new_router --------------------------------------------------------------------------


def test_new_router_makes_an_id_and_neutrons_namespace() -> None:
    r = new_router(name="edge", project_id="p1")
    assert str(uuid.UUID(r.id)) == r.id
    assert r.namespace == default_namespace(r.id) == NAMESPACE_PREFIX + r.id
    assert r.namespace == f"qrouter-{r.id}"
    assert (r.name, r.project_id, r.status) == ("edge", "p1", Status.PENDING)


def test_new_router_ids_are_fresh() -> None:
    assert new_router(name="a", project_id="p").id != new_router(name="a", project_id="p").id


def test_new_router_takes_an_explicit_namespace_and_id() -> None:
    r = new_router(name="a", project_id="p", namespace="my-ns", router_id=RID)
    assert (r.id, r.namespace) == (RID, "my-ns")


BAD_NAMES: list[object] = ["a\nb", "a\x00", "a\u202e", "\u200b", LONG, None, 1]
BAD_PROJECTS: list[object] = [*HOSTILE_TEXT, "", None, 1]
BAD_NAMESPACES: list[object] = [
    *HOSTILE_TEXT,
    *["", "-rf", "--help", ".hidden", "..", "../x", "a/b", "/", 1],
]
NEW_ROUTER_BAD: list[tuple[dict[str, object], str]] = [
    *[({"name": v}, "name") for v in BAD_NAMES],
    *[({"project_id": v}, "project_id") for v in BAD_PROJECTS],
    *[({"namespace": v}, "namespace") for v in BAD_NAMESPACES],
]


@pytest.mark.parametrize(("fields", "field"), NEW_ROUTER_BAD)
def test_new_router_refuses(fields: dict[str, object], field: str) -> None:
    arguments: dict[str, Any] = {"name": "r", "project_id": "p", **fields}
    with pytest.raises(InvalidInput) as info:
        new_router(**arguments)
    assert_clean_refusal(info.value, field)


def test_new_router_refuses_a_bad_id() -> None:
    with pytest.raises(InvalidInput) as info:
        new_router(name="r", project_id="p", namespace="ns", router_id="not-a-uuid")
    assert_clean_refusal(info.value, "id")


# --- check_binding_fields / new_binding --------------------------------------------------

CATALOG = HelperCatalog()

BINDING_OK: list[tuple[object, object, object, tuple[Protocol, int, str]]] = [
    ("tcp", 21, "ftp", (Protocol.TCP, 21, "ftp")),
    ("udp", 69, "tftp", (Protocol.UDP, 69, "tftp")),
    ("tcp", 5060, "sip", (Protocol.TCP, 5060, "sip")),
    ("udp", 5060, "sip", (Protocol.UDP, 5060, "sip")),
    ("udp", 10080, "amanda", (Protocol.UDP, 10080, "amanda")),
    ("tcp", 6667, "irc", (Protocol.TCP, 6667, "irc")),
    ("tcp", 1723, "pptp", (Protocol.TCP, 1723, "pptp")),
    ("tcp", 6566, "sane", (Protocol.TCP, 6566, "sane")),
    ("udp", 161, "snmp", (Protocol.UDP, 161, "snmp")),
    ("udp", 137, "netbios-ns", (Protocol.UDP, 137, "netbios-ns")),
    ("udp", 1719, "RAS", (Protocol.UDP, 1719, "RAS")),
    ("tcp", 1720, "Q.931", (Protocol.TCP, 1720, "Q.931")),
    # Neutron's alias is kept as the user wrote it; the catalog resolves it per protocol.
    ("udp", 1719, "h323", (Protocol.UDP, 1719, "h323")),
    ("tcp", 1720, "h323", (Protocol.TCP, 1720, "h323")),
    ("tcp", 1, "ftp", (Protocol.TCP, 1, "ftp")),
    ("tcp", 65535, "ftp", (Protocol.TCP, 65535, "ftp")),
    (Protocol.UDP, 69, "tftp", (Protocol.UDP, 69, "tftp")),
]


@pytest.mark.parametrize(("protocol", "port", "helper", "expected"), BINDING_OK)
def test_binding_fields_accepted(
    protocol: object, port: object, helper: object, expected: tuple[Protocol, int, str]
) -> None:
    assert check_binding_fields(CATALOG, protocol, port, helper) == expected


BINDING_FIELDS_BAD: list[tuple[object, object, object, str]] = [
    # protocol
    *[
        (p, 21, "ftp", "protocol")
        for p in ["TCP", "Tcp", "UDP", " tcp", "tcp\n", "tcp\x00", "sctp", "", "6", LONG]
    ],
    *[(p, 21, "ftp", "protocol") for p in [6, None, True, b"tcp", ["tcp"]]],
    # port
    *[
        ("tcp", p, "ftp", "port")
        for p in [0, -1, 65536, 2**31, 10**100, 10**5000, True, False, 21.0, "21", None, [21]]
    ],
    # helper: unknown names, case variants, hostile text
    *[
        ("tcp", 21, h, "helper")
        for h in [
            "FTP",
            "Ftp",
            "ftp ",
            " ftp",
            "ftp\n",
            "ftp\x00",
            "nf_conntrack_ftp",
            "",
            "bogus",
            "; rm -rf /",
            "$(id)",
            "`id`",
            "ftp|sip",
            "ftp && sip",
            "'ftp'",
            "ftp\u202e",
            "\u200bftp",
            "\U0001f680",
            LONG,
        ]
    ],
    *[("udp", 1719, h, "helper") for h in ["H323", "H.323", "h.323", "ras", "Ras"]],
    *[("tcp", 1720, h, "helper") for h in ["H323", "q.931", "Q931"]],
    *[("tcp", 21, h, "helper") for h in [None, 21, ["ftp"], {"name": "ftp"}]],
    # helper that exists but not for this protocol
    ("udp", 21, "ftp", "helper"),
    ("tcp", 69, "tftp", "helper"),
    ("tcp", 10080, "amanda", "helper"),
    ("udp", 6667, "irc", "helper"),
    ("udp", 1723, "pptp", "helper"),
    ("tcp", 161, "snmp", "helper"),
    ("tcp", 137, "netbios-ns", "helper"),
    ("tcp", 1719, "RAS", "helper"),
    ("udp", 1720, "Q.931", "helper"),
]


@pytest.mark.parametrize(("protocol", "port", "helper", "field"), BINDING_FIELDS_BAD)
def test_binding_fields_refused(protocol: object, port: object, helper: object, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_binding_fields(CATALOG, protocol, port, helper)
    assert_clean_refusal(info.value, field)


@pytest.mark.parametrize(
    ("protocol", "helper", "says"),
    [
        ("udp", "ftp", "only tcp"),
        ("tcp", "tftp", "only udp"),
        ("udp", "irc", "only tcp"),
        ("udp", "Q.931", "only tcp"),
        ("tcp", "RAS", "only udp"),
    ],
)
def test_wrong_protocol_message_says_what_is_supported(
    protocol: str, helper: str, says: str
) -> None:
    with pytest.raises(InvalidInput, match=says):
        check_binding_fields(CATALOG, protocol, 21, helper)


def test_amanda_over_tcp_is_refused_as_udp_only() -> None:
    # Neutron's default allow-list offers amanda/tcp; the kernel's helper is udp-only.
    with pytest.raises(InvalidInput) as info:
        check_binding_fields(CATALOG, "tcp", 10080, "amanda")
    assert info.value.field == "helper"
    message = str(info.value)
    assert "amanda" in message
    assert "only udp" in message


def test_unknown_helper_message_lists_the_kernel_helpers() -> None:
    with pytest.raises(InvalidInput) as info:
        check_binding_fields(CATALOG, "tcp", 21, "H323")
    message = str(info.value)
    assert "'H323'" in message
    for name in ("ftp", "tftp", "h323", "RAS", "Q.931"):
        assert name in message


def test_hostile_helper_is_escaped_and_cut_in_the_message() -> None:
    with pytest.raises(InvalidInput) as info:
        check_binding_fields(CATALOG, "tcp", 21, "x\n" * 5_000)
    message = str(info.value)
    assert "\\n" in message
    assert "\n" not in message
    assert "..." in message


def test_protocol_is_checked_before_port_and_helper() -> None:
    with pytest.raises(InvalidInput) as info:
        check_binding_fields(CATALOG, "sctp", 0, "bogus")
    assert info.value.field == "protocol"


def test_narrowed_catalog_refuses_what_it_does_not_allow() -> None:
    narrow = HelperCatalog(["tftp:udp"])
    assert check_binding_fields(narrow, "udp", 69, "tftp") == (Protocol.UDP, 69, "tftp")
    with pytest.raises(InvalidInput) as info:
        check_binding_fields(narrow, "tcp", 21, "ftp")
    assert_clean_refusal(info.value, "helper")
    assert "not allowed" in str(info.value)
    assert "tftp/udp" in str(info.value)


def test_new_binding_takes_router_and_project_from_the_router() -> None:
    r = router(project_id="tenant-a")
    b = new_binding(CATALOG, r, protocol="udp", port=69, helper="tftp")
    assert (b.router_id, b.project_id) == (r.id, "tenant-a")
    assert (b.protocol, b.port, b.helper) == (Protocol.UDP, 69, "tftp")
    assert str(uuid.UUID(b.id)) == b.id
    assert b.status is Status.PENDING
    assert new_binding(CATALOG, r, protocol="udp", port=69, helper="tftp").id != b.id


def test_new_binding_takes_an_explicit_id() -> None:
    b = new_binding(CATALOG, router(), protocol="tcp", port=21, helper="ftp", binding_id=BID)
    assert b.id == BID


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"protocol": "TCP"}, "protocol"),
        ({"port": True}, "port"),
        ({"port": 65536}, "port"),
        ({"helper": "; rm -rf /"}, "helper"),
        ({"protocol": "udp"}, "helper"),  # ftp over udp
        ({"binding_id": "\n" + "0" * 31}, "id"),
    ],
)
def test_new_binding_refuses(fields: dict[str, Any], field: str) -> None:
    arguments: dict[str, Any] = {"protocol": "tcp", "port": 21, "helper": "ftp", **fields}
    with pytest.raises(InvalidInput) as info:
        new_binding(CATALOG, router(), **arguments)
    assert_clean_refusal(info.value, field)


# --- assignments_for ---------------------------------------------------------------------


def _b(index: int, protocol: Protocol, port: int, helper: str) -> HelperBinding:
    return binding(id=str(uuid.UUID(int=100 + index)), protocol=protocol, port=port, helper=helper)


def test_assignments_resolve_aliases_to_kernel_names_and_sort() -> None:
    bindings = [
        _b(1, Protocol.UDP, 69, "tftp"),
        _b(2, Protocol.TCP, 1720, "h323"),
        _b(3, Protocol.TCP, 21, "ftp"),
        _b(4, Protocol.UDP, 1719, "h323"),
    ]
    assert [(a.protocol, a.port, a.helper) for a in assignments_for(CATALOG, bindings)] == [
        (Protocol.TCP, 21, "ftp"),
        (Protocol.TCP, 1720, "Q.931"),
        (Protocol.UDP, 69, "tftp"),
        (Protocol.UDP, 1719, "RAS"),
    ]


def test_assignments_merge_bindings_on_one_protocol_and_port() -> None:
    alias, kernel_name = _b(1, Protocol.UDP, 1719, "h323"), _b(2, Protocol.UDP, 1719, "RAS")
    assert assignments_for(CATALOG, [alias, kernel_name]) == [Assignment(Protocol.UDP, 1719, "RAS")]


def test_assignments_skip_what_the_catalog_no_longer_allows() -> None:
    bindings = [
        _b(1, Protocol.TCP, 21, "ftp"),
        _b(2, Protocol.UDP, 69, "tftp"),
        _b(3, Protocol.UDP, 5060, "sip"),
    ]
    narrow = HelperCatalog(["tftp:udp"])
    assert assignments_for(narrow, bindings) == [Assignment(Protocol.UDP, 69, "tftp")]
    assert assignments_for(HelperCatalog([]), bindings) == []


@pytest.mark.parametrize(
    "helper", ["; rm -rf /", "ftp\n", "FTP", "H323", "nf_conntrack_ftp", LONG, "amanda"]
)
def test_assignments_never_pass_on_a_helper_the_catalog_refuses(helper: str) -> None:
    # A binding built around the constructors (e.g. a row written by older code) must not reach
    # the kernel: only catalog names do. amanda is here over tcp, which the kernel lacks.
    hostile = _b(1, Protocol.TCP, 10080, helper)
    good = _b(2, Protocol.TCP, 21, "ftp")
    assert assignments_for(CATALOG, [hostile, good]) == [Assignment(Protocol.TCP, 21, "ftp")]


def test_assignments_of_nothing() -> None:
    assert assignments_for(CATALOG, []) == []


def test_assignments_sort_by_protocol_port_direction_then_helper() -> None:
    ingress_irc = Assignment(Protocol.TCP, 21, "irc")
    output_ftp = Assignment(Protocol.TCP, 21, "ftp", Direction.OUTPUT)
    udp = Assignment(Protocol.UDP, 20, "tftp")
    assert sorted([udp, output_ftp, ingress_irc]) == [ingress_irc, output_ftp, udp]


def test_a_binding_defaults_to_ingress_and_takes_output() -> None:
    router = new_router(name="r", project_id="p", router_id=RID)
    catalog = HelperCatalog()
    assert new_binding(catalog, router, protocol="tcp", port=21, helper="ftp").direction is (
        Direction.INGRESS
    )
    output = new_binding(catalog, router, protocol="tcp", port=21, helper="ftp", direction="output")
    assert output.direction is Direction.OUTPUT


@pytest.mark.parametrize("value", ["OUTPUT", "egress", "", " output", 1, None, ["output"]])
def test_anything_but_ingress_or_output_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_direction(value)
    assert caught.value.field == "direction"


def test_same_port_in_both_directions_gives_two_assignments() -> None:
    router = new_router(name="r", project_id="p", router_id=RID)
    catalog = HelperCatalog()
    bindings = [
        new_binding(catalog, router, protocol="tcp", port=21, helper="ftp"),
        new_binding(catalog, router, protocol="tcp", port=21, helper="irc", direction="output"),
    ]
    assert assignments_for(catalog, bindings) == [
        Assignment(Protocol.TCP, 21, "ftp"),
        Assignment(Protocol.TCP, 21, "irc", Direction.OUTPUT),
    ]
