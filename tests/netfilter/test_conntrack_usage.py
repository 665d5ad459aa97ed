"""Parsing `conntrack` listings into live helper usage (cthm.netfilter.conntrack_usage).

The listings are real output of conntrack v1.4.7 on this project's test machine: a control
connection to tcp/21 with the ftp helper assigned, after the client sent a PORT command.
"""

from __future__ import annotations

import pytest

from cthm.netfilter import HelperUsage, NamespaceNotFound, NftError, read_usage
from cthm.netfilter.conntrack_usage import parse_connections, parse_expectations

FLOWS = (
    "ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=59214 dport=21 "
    "src=127.0.0.1 dst=127.0.0.1 sport=21 dport=59214 [ASSURED] mark=0 helper=ftp use=1\n"
    # Without a helper: not counted.
    "ipv4     2 udp      17 29 src=198.18.0.1 dst=198.18.0.2 sport=40000 dport=69 "
    "[UNREPLIED] src=198.18.0.2 dst=198.18.0.1 sport=69 dport=40000 mark=0 use=1\n"
    "ipv4     2 tcp      6 431999 ESTABLISHED src=127.0.0.1 dst=127.0.0.1 sport=59216 dport=2121 "
    "src=127.0.0.1 dst=127.0.0.1 sport=2121 dport=59216 [ASSURED] mark=0 helper=ftp use=1\n"
)
EXPECTATIONS = (
    "299 proto=6 src=127.0.0.1 dst=127.0.0.1 sport=0 dport=51210 mask-src=255.255.255.255 "
    "mask-dst=255.255.255.255 sport=0 dport=65535 master-src=127.0.0.1 master-dst=127.0.0.1 "
    "sport=59214 dport=21 class=0 helper=ftp\n"
)


def test_connections_are_counted_by_helper_protocol_and_original_port() -> None:
    assert parse_connections(FLOWS) == {("ftp", "tcp", 21): 1, ("ftp", "tcp", 2121): 1}


def test_expectations_are_counted_under_their_master_connection_port() -> None:
    # The expectation's own dport (51210) and mask dport (65535) are not the binding's port.
    assert parse_expectations(EXPECTATIONS) == {("ftp", "tcp", 21): 1}


def test_per_binding_view_of_both_tables() -> None:
    usage = HelperUsage(parse_connections(FLOWS), parse_expectations(EXPECTATIONS))
    assert usage.of("ftp", "tcp", 21) == {"connections": 1, "expectations": 1}
    assert usage.of("ftp", "tcp", 2121) == {"connections": 1, "expectations": 0}
    assert usage.of("tftp", "udp", 69) == {"connections": 0, "expectations": 0}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown.\n",
        "ipv4 2 tcp 6 10 helper=ftp dport=notaport\n",
        "garbage helper=\n",
    ],
)
def test_empty_and_odd_listings_count_nothing(text: str) -> None:
    assert not parse_connections(text)
    assert not parse_expectations(text)


def test_a_missing_namespace_is_an_nft_error() -> None:
    with pytest.raises(NftError) as raised:
        read_usage("cthm-no-such-namespace-usage")
    assert isinstance(raised.value, NamespaceNotFound)
