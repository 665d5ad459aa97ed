"""The helper catalog: the kernel's real helpers, Neutron's alias, and the operator's allow-list."""

from __future__ import annotations

import pytest

from cthm.domain import (
    ALIASES,
    KERNEL_HELPERS,
    HelperCatalog,
    InvalidInput,
    Protocol,
    parse_protocol,
)

TCP, UDP = Protocol.TCP, Protocol.UDP

# From the issue: ftp/tcp, tftp/udp, sip/tcp+udp, irc/tcp, pptp/tcp, sane/tcp, snmp/udp,
# amanda/udp, netbios-ns/udp, RAS/udp and Q.931/tcp.
KERNEL_PAIRS = {
    ("ftp", TCP),
    ("tftp", UDP),
    ("sip", TCP),
    ("sip", UDP),
    ("irc", TCP),
    ("pptp", TCP),
    ("sane", TCP),
    ("snmp", UDP),
    ("amanda", UDP),
    ("netbios-ns", UDP),
    ("RAS", UDP),
    ("Q.931", TCP),
}
ALIAS_PAIRS = {("h323", UDP): "RAS", ("h323", TCP): "Q.931"}


def pairs(catalog: HelperCatalog) -> list[tuple[str, Protocol]]:
    return [(entry.helper, entry.protocol) for entry in catalog.entries()]


def test_kernel_helpers_are_exactly_the_kernels() -> None:
    assert {(spec.name, p) for spec in KERNEL_HELPERS for p in spec.protocols} == KERNEL_PAIRS
    names = [spec.name for spec in KERNEL_HELPERS]
    assert len(names) == len(set(names)) == 11
    assert HelperCatalog().kernel_helpers == KERNEL_HELPERS


def test_kernel_helper_modules() -> None:
    modules = {spec.name: spec.module for spec in KERNEL_HELPERS}
    assert modules["RAS"] == modules["Q.931"] == "nf_conntrack_h323"
    assert modules["netbios-ns"] == "nf_conntrack_netbios_ns"
    for name in ("ftp", "tftp", "sip", "irc", "pptp", "sane", "snmp", "amanda"):
        assert modules[name] == f"nf_conntrack_{name}"


def test_helpers_without_an_ipv6_kernel_helper() -> None:
    # Measured on this kernel (DESIGN.md): `l3proto ip6` fails for exactly these.
    assert {spec.name for spec in KERNEL_HELPERS if not spec.ipv6} == {
        "irc",
        "pptp",
        "snmp",
        "netbios-ns",
    }


def test_h323_is_an_alias_for_the_kernel_pair() -> None:
    assert {(alias, p): name for alias, m in ALIASES.items() for p, name in m.items()} == (
        ALIAS_PAIRS
    )
    catalog = HelperCatalog()
    assert catalog.resolve("h323", UDP).name == "RAS"
    assert catalog.resolve("h323", TCP).name == "Q.931"


@pytest.mark.parametrize(("helper", "protocol"), sorted(KERNEL_PAIRS))
def test_every_kernel_pair_resolves_to_itself(helper: str, protocol: Protocol) -> None:
    spec = HelperCatalog().resolve(helper, protocol)
    assert spec.name == helper
    assert protocol in spec.protocols


def test_entries_are_complete_and_sorted() -> None:
    entries = HelperCatalog().entries()
    got = [(e.helper, e.protocol) for e in entries]
    assert set(got) == KERNEL_PAIRS | set(ALIAS_PAIRS)
    assert len(got) == len(set(got))
    assert got == sorted(got, key=lambda hp: (hp[0].lower(), hp[1]))
    for entry in entries:
        assert entry.kernel_helper == entry.spec.name
        assert entry.protocol in entry.spec.protocols
        expected = ALIAS_PAIRS.get((entry.helper, entry.protocol), entry.helper)
        assert entry.kernel_helper == expected


@pytest.mark.parametrize(
    ("helper", "protocol"),
    [
        ("ftp", UDP),
        ("tftp", TCP),
        ("amanda", TCP),
        ("irc", UDP),
        ("RAS", TCP),
        ("Q.931", UDP),
        ("H323", UDP),
        ("H323", TCP),
        ("FTP", TCP),
        ("Tftp", UDP),
        ("SIP", UDP),
        ("ras", UDP),
        ("q.931", TCP),
        ("bogus", TCP),
        ("", TCP),
    ],
)
def test_resolve_refuses(helper: str, protocol: Protocol) -> None:
    with pytest.raises(InvalidInput) as info:
        HelperCatalog().resolve(helper, protocol)
    assert info.value.field == "helper"
    assert str(info.value).isprintable()


def test_amanda_tcp_message_explains_the_kernel() -> None:
    with pytest.raises(InvalidInput, match="the kernel's amanda helper handles only udp"):
        HelperCatalog().resolve("amanda", TCP)


# --- allow-list --------------------------------------------------------------------------


def test_allow_list_narrows_the_catalog() -> None:
    catalog = HelperCatalog(["tftp:udp", "h323", "ftp"])
    assert pairs(catalog) == [("ftp", TCP), ("h323", TCP), ("h323", UDP), ("tftp", UDP)]
    assert catalog.resolve("tftp", UDP).name == "tftp"
    assert catalog.resolve("h323", UDP).name == "RAS"
    assert catalog.resolve("h323", TCP).name == "Q.931"
    assert catalog.resolve("ftp", TCP).name == "ftp"
    for helper, protocol in [("sip", UDP), ("sip", TCP), ("irc", TCP), ("amanda", UDP)]:
        with pytest.raises(InvalidInput, match="not allowed on this deployment") as info:
            catalog.resolve(helper, protocol)
        assert "ftp/tcp" in str(info.value)
    # The kernel check comes first: a pair the kernel lacks says so, not "not allowed".
    with pytest.raises(InvalidInput, match="only udp"):
        catalog.resolve("tftp", TCP)


def test_allow_list_of_one_protocol_of_a_two_protocol_helper() -> None:
    catalog = HelperCatalog(["sip:udp"])
    assert pairs(catalog) == [("sip", UDP)]
    with pytest.raises(InvalidInput, match="not allowed"):
        catalog.resolve("sip", TCP)


def test_allow_list_entry_without_protocol_means_every_protocol() -> None:
    assert pairs(HelperCatalog(["sip"])) == [("sip", TCP), ("sip", UDP)]
    assert pairs(HelperCatalog(["h323:udp"])) == [("h323", UDP)]


def test_allow_list_entries_are_trimmed_and_deduplicated() -> None:
    assert pairs(HelperCatalog([" ftp ", "ftp:tcp", "ftp"])) == [("ftp", TCP)]


def test_empty_allow_list_allows_nothing() -> None:
    catalog = HelperCatalog([])
    assert catalog.entries() == []
    with pytest.raises(InvalidInput, match=r"allowed: none"):
        catalog.resolve("ftp", TCP)


def test_no_allow_list_allows_the_whole_kernel() -> None:
    assert set(pairs(HelperCatalog(None))) == KERNEL_PAIRS | set(ALIAS_PAIRS)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("amanda:tcp", "only udp"),
        ("h323:sctp", "not a supported protocol"),
        ("ftp:udp", "does not support udp"),
        ("tftp:tcp", "does not support tcp"),
        ("ftp:TCP", "not a supported protocol"),
        ("bogus", "unknown helper"),
        ("FTP", "unknown helper"),
        ("H323", "unknown helper"),
        ("bogus:tcp", "unknown helper"),
        ("", "unknown helper"),
        ("; rm -rf /", "unknown helper"),
        ("x" * 10_000, "unknown helper"),
        ("ftp\x00", "unknown helper"),
    ],
)
def test_allow_list_refuses(entry: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as info:
        HelperCatalog(["tftp", entry])
    message = str(info.value)
    assert len(message) <= 300, message[:200]
    assert message.isprintable(), repr(message)


def test_allow_list_is_read_once() -> None:
    # A generator is consumed at construction; later calls see the same allow-list.
    catalog = HelperCatalog(entry for entry in ["ftp"])
    assert pairs(catalog) == [("ftp", TCP)]
    assert pairs(catalog) == [("ftp", TCP)]


# --- protocol parsing --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "protocol"), [("tcp", TCP), ("udp", UDP)])
def test_parse_protocol(text: str, protocol: Protocol) -> None:
    assert parse_protocol(text) is protocol


@pytest.mark.parametrize("text", ["TCP", "Udp", "sctp", "", " tcp", "tcp\n", "6", "x" * 10_000])
def test_parse_protocol_refuses(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_protocol(text)
    assert info.value.field == "protocol"
    assert len(str(info.value)) <= 300
    assert str(info.value).isprintable()
