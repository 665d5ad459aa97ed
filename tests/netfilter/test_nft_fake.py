"""The in-memory fake on its own: all-or-nothing, kernel-like refusals, namespaces, honesty about
what it does not understand. (test_nft_agree.py runs the same cases against the real kernel.)"""

from __future__ import annotations

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    FakeNftables,
    FakeUnsupported,
    NamespaceNotFound,
    NftablesBackend,
    NftBusy,
    NftExists,
    NftNotFound,
    NftOther,
    UnsafeValue,
    desired_table,
    parse_table,
    render,
)

from .conftest import FOREIGN_RULESET, normalized_ruleset

TCP, UDP = Protocol.TCP, Protocol.UDP
FTP = [Assignment(TCP, 21, "ftp")]


@pytest.fixture
def fake() -> FakeNftables:
    fake = FakeNftables()
    fake.add_namespace("r1")
    return fake


def table(fake: FakeNftables, namespace: str = "r1") -> object:
    return parse_table(fake.run(namespace, "list ruleset", json=True))


def test_apply_is_all_or_nothing(fake: FakeNftables) -> None:
    fake.run("r1", str(render(FTP)))
    before = fake.run("r1", "list ruleset", json=True)
    bad = str(render([Assignment(UDP, 69, "tftp")])) + (
        'add ct helper inet cthm x { type "nosuchhelper" protocol tcp; l3proto inet; }\n'
    )
    with pytest.raises(NftNotFound, match="No such file or directory"):
        fake.run("r1", bad)
    assert fake.run("r1", "list ruleset", json=True) == before
    assert [r.ok for r in fake.runs] == [True, True, False, True]
    assert fake.writes == 1


def test_kernel_like_refusals(fake: FakeNftables) -> None:
    with pytest.raises(NftNotFound):
        fake.run("r1", "delete table inet cthm")
    fake.run("r1", str(render(FTP)))
    with pytest.raises(NftBusy, match="Device or resource busy"):
        fake.run("r1", "delete ct helper inet cthm ftp-tcp")
    with pytest.raises(NftExists, match="File exists"):
        fake.run("r1", "create table inet cthm")
    with pytest.raises(NftOther, match="Operation not supported"):
        fake.run(
            "r1",
            "add chain inet cthm prerouting { type filter hook input priority filter; }",
        )
    with pytest.raises(NftNotFound):
        fake.run("r1", 'add ct helper inet cthm f { type "ftp" protocol udp; l3proto inet; }')
    with pytest.raises(NftNotFound):
        fake.run("r1", 'add ct helper inet cthm i { type "irc" protocol tcp; l3proto ip6; }')
    assert table(fake) == desired_table(FTP)


def test_add_of_an_existing_object_is_a_silent_no_op(fake: FakeNftables) -> None:
    fake.run("r1", str(render(FTP)))
    fake.run("r1", 'add ct helper inet cthm ftp-tcp { type "tftp" protocol udp; l3proto inet; }')
    assert table(fake) == desired_table(FTP)


def test_helper_types_are_configurable() -> None:
    fake = FakeNftables(helper_types=["ftp"])
    fake.add_namespace("r1")
    backend = NftablesBackend(fake)
    assert backend.available_helpers("r1", [("ftp", TCP), ("tftp", UDP)]) == {
        ("ftp", TCP): True,
        ("tftp", UDP): False,
    }
    with pytest.raises(NftNotFound):
        backend.apply("r1", [Assignment(UDP, 69, "tftp")])
    assert backend.read("r1") is None
    assert all(r.dry_run for r in fake.runs[:3])


def test_namespaces_are_explicit(fake: FakeNftables) -> None:
    with pytest.raises(NamespaceNotFound, match="namespace r2 not found"):
        fake.run("r2", str(render(FTP)))
    fake.add_namespace("r2")
    fake.run("r2", str(render(FTP)))
    assert fake.namespaces == ("r1", "r2")
    assert fake.tables("r1") == []
    assert fake.tables("r2") == [("inet", "cthm")]
    fake.remove_namespace("r2")
    with pytest.raises(NamespaceNotFound):
        NftablesBackend(fake).read("r2")


@pytest.mark.parametrize("name", ["../etc", "a b", "-n", "x;reboot", "", "a" * 65, ".hidden"])
def test_unsafe_namespace_names_are_refused(fake: FakeNftables, name: str) -> None:
    with pytest.raises(UnsafeValue):
        fake.run(name, "list ruleset", json=True)
    with pytest.raises(UnsafeValue):
        fake.add_namespace(name)


def test_foreign_tables_survive_every_backend_operation(fake: FakeNftables) -> None:
    fake.run("r1", FOREIGN_RULESET)

    def foreign() -> list[str]:
        items = normalized_ruleset(fake.run("r1", "list ruleset", json=True))
        return [i for i in items if '"cthm"' not in i]

    before = foreign()
    assert len(before) == 11
    backend = NftablesBackend(fake)
    backend.apply("r1", FTP)
    backend.apply("r1", [Assignment(UDP, 69, "tftp")])
    backend.available_helpers("r1", [("ftp", TCP), ("nosuchhelper", TCP)])
    backend.apply("r1", [])
    assert backend.delete("r1") is True
    assert backend.delete("r1") is False
    assert foreign() == before
    assert fake.tables("r1") == [("inet", "filter"), ("inet", "other"), ("ip", "nat")]


def test_dry_run_commits_nothing(fake: FakeNftables) -> None:
    fake.run("r1", str(render(FTP)), dry_run=True)
    assert table(fake) is None
    assert fake.writes == 0


@pytest.mark.parametrize(
    "commands",
    [
        "flush ruleset",
        "table inet cthm { }",
        "add set inet cthm s { type inet_service; flags interval; }",
        "add rule inet cthm prerouting ip saddr 198.18.0.1 accept",
        "add table inet cthm extra words",
        'add rule inet cthm prerouting comment "unterminated',
        "insert rule inet cthm prerouting counter",
    ],
)
def test_what_the_fake_does_not_understand_is_rejected(fake: FakeNftables, commands: str) -> None:
    fake.run("r1", str(render(FTP)))
    before = fake.run("r1", "list ruleset", json=True)
    with pytest.raises(FakeUnsupported):
        fake.run("r1", commands)
    assert fake.run("r1", "list ruleset", json=True) == before


def test_listing_is_json_only(fake: FakeNftables) -> None:
    with pytest.raises(FakeUnsupported):
        fake.run("r1", "list ruleset")
    with pytest.raises(NftNotFound):
        fake.run("r1", "list table inet cthm", json=True)


def test_backend_desired_is_what_read_returns_after_apply(fake: FakeNftables) -> None:
    backend = NftablesBackend(fake)
    for assignments in (FTP, [], [Assignment(UDP, 137, "netbios-ns"), *FTP]):
        backend.apply("r1", assignments)
        assert backend.read("r1") == backend.desired(assignments) == desired_table(assignments)
