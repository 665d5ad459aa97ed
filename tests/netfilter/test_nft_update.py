"""Partial sync (`NftablesBackend.update`) against the fake: element adds and deletes in one
transaction, a read-back of only the touched sets, None (nothing written) whenever a set, helper
object or chain would appear or go. test_nft_update_kernel.py runs the same against the kernel."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter import (
    FakeNftables,
    IptablesBackend,
    KernelTable,
    NftablesBackend,
    NftNotFound,
    UnsafeValue,
    desired_table,
)
from cthm.netfilter.iptables import LegacyGuard

TCP, UDP = Protocol.TCP, Protocol.UDP
OUT = Direction.OUTPUT
OWNER = "6f1d2c3b-0000-4000-8000-00000000000a"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
FTP_990 = [*FTP, Assignment(TCP, 990, "ftp")]


@pytest.fixture
def fake() -> FakeNftables:
    fake = FakeNftables()
    fake.add_namespace("r1")
    return fake


@pytest.fixture
def backend(fake: FakeNftables) -> NftablesBackend:
    return NftablesBackend(fake, owner=OWNER)


def verified(backend: NftablesBackend, assignments: list[Assignment]) -> KernelTable:
    """A full sync, as the agent does it first: apply, read back, compare."""
    backend.apply("r1", assignments)
    table = backend.read("r1")
    assert table == backend.desired(assignments)
    assert table is not None
    return table


def runs_since(fake: FakeNftables, start: int) -> list[tuple[str, bool]]:
    return [(run.commands, run.json) for run in fake.runs[start:]]


def test_adding_one_port_is_one_element_add_and_one_set_read(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    table = verified(backend, FTP)
    start, writes = len(fake.runs), fake.writes
    result = backend.update("r1", table, FTP_990)
    assert result == backend.desired(FTP_990)
    assert runs_since(fake, start) == [
        ("add element inet cthm ingress-ftp-tcp { 990 }\n", False),
        ("list set inet cthm ingress-ftp-tcp", True),  # only the touched set, never the table
    ]
    assert fake.writes == writes + 1
    assert backend.read("r1") == backend.desired(FTP_990)


def test_deleting_one_port_is_one_element_delete(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    table = verified(backend, FTP_990)
    start = len(fake.runs)
    assert backend.update("r1", table, FTP) == backend.desired(FTP)
    assert runs_since(fake, start) == [
        ("delete element inet cthm ingress-ftp-tcp { 990 }\n", False),
        ("list set inet cthm ingress-ftp-tcp", True),
    ]
    assert backend.read("r1") == backend.desired(FTP)


def test_a_port_changing_helper_between_existing_sets_is_one_transaction(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    irc = [*FTP, Assignment(TCP, 6667, "irc")]
    table = verified(backend, irc)
    moved = [Assignment(TCP, 21, "irc"), *irc[1:]]
    start, writes = len(fake.runs), fake.writes
    assert backend.update("r1", table, moved) == backend.desired(moved)
    assert fake.writes == writes + 1
    assert runs_since(fake, start) == [
        (
            "delete element inet cthm ingress-ftp-tcp { 21 }\n"
            "add element inet cthm ingress-irc-tcp { 21 }\n",
            False,
        ),
        ("list set inet cthm ingress-ftp-tcp", True),
        ("list set inet cthm ingress-irc-tcp", True),
    ]
    assert backend.read("r1") == backend.desired(moved)


def test_nothing_to_change_runs_nothing(fake: FakeNftables, backend: NftablesBackend) -> None:
    table = verified(backend, FTP)
    start = len(fake.runs)
    assert backend.update("r1", table, list(reversed(FTP))) is table
    assert fake.runs[start:] == []


def test_a_chain_of_updates_each_verified(fake: FakeNftables, backend: NftablesBackend) -> None:
    """Each update starts from what the previous one returned (as the agent chains them)."""
    table = verified(backend, FTP)
    wanted = list(FTP)
    for port in (990, 991, 992):
        wanted.append(Assignment(TCP, port, "ftp"))
        result = backend.update("r1", table, wanted)
        assert result == backend.desired(wanted)
        assert result is not None
        table = result
    wanted = [a for a in wanted if a.port != 991]
    result = backend.update("r1", table, wanted)
    assert result == backend.desired(wanted) == backend.read("r1")
    # A table read afresh (another object, same content) is as good a starting point.
    fresh = backend.read("r1")
    assert fresh is not None
    assert backend.update("r1", fresh, FTP) == backend.desired(FTP) == backend.read("r1")


CANNOT = {
    "a helper kind appears": [*FTP, Assignment(TCP, 6667, "irc")],
    "a helper kind goes": FTP[:2],
    "a direction appears": [*FTP, Assignment(TCP, 21, "ftp", OUT)],
    "a set would appear for a shared helper": [*FTP, Assignment(UDP, 69, "tftp", OUT)],
    "everything goes": [],
}


@pytest.mark.parametrize("case", CANNOT)
def test_none_when_a_set_would_appear_or_go(
    fake: FakeNftables, backend: NftablesBackend, case: str
) -> None:
    table = verified(backend, FTP)
    start = len(fake.runs)
    assert backend.update("r1", table, CANNOT[case]) is None
    assert fake.runs[start:] == []  # nothing read, nothing written


def test_none_for_a_table_that_is_not_clean_or_not_ours(fake: FakeNftables) -> None:
    mine = NftablesBackend(fake, owner=OWNER)
    unmarked = NftablesBackend(fake)
    unmarked.apply("r1", FTP)
    table = mine.read("r1")
    assert table is not None
    start = len(fake.runs)
    assert mine.update("r1", table, FTP_990) is None, "unmarked: the next full apply marks it"
    fake.run("r1", "add rule inet cthm prerouting counter\n")
    dirty = unmarked.read("r1")
    assert dirty is not None
    assert not dirty.clean
    start = len(fake.runs)
    assert unmarked.update("r1", dirty, FTP_990) is None
    assert unmarked.update("r1", object(), FTP_990) is None  # not this backend's read-back
    assert fake.runs[start:] == []


def test_none_for_a_table_of_the_previous_layout(fake: FakeNftables) -> None:
    fake.run(
        "r1",
        "add table inet cthm\n"
        'add ct helper inet cthm ftp-tcp { type "ftp" protocol tcp; l3proto inet; }\n'
        "add chain inet cthm prerouting { type filter hook prerouting priority filter; }\n"
        'add rule inet cthm prerouting ct helper set tcp dport map { 21 : "ftp-tcp" }\n',
    )
    backend = NftablesBackend(fake)
    old = backend.read("r1")
    assert old is not None
    assert old.assignments == desired_table(FTP[:1]).assignments
    assert backend.update("r1", old, FTP[:2]) is None


def test_a_port_removed_by_hand_fails_the_whole_transaction(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    table = verified(backend, FTP)
    fake.run("r1", "delete element inet cthm ingress-ftp-tcp { 2121 }\n")
    before = fake.run("r1", "list ruleset", json=True)
    wanted = [FTP[0], Assignment(TCP, 990, "ftp"), FTP[2]]  # 2121 out, 990 in
    with pytest.raises(NftNotFound):
        backend.update("r1", table, wanted)
    assert fake.run("r1", "list ruleset", json=True) == before  # 990 was not added either


def test_a_port_added_by_hand_to_a_touched_set_shows_in_the_result(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    """The read-back is the kernel's, not the plan: drift in a touched set is seen."""
    table = verified(backend, FTP)
    fake.run("r1", "add element inet cthm ingress-ftp-tcp { 8021 }\n")
    result = backend.update("r1", table, FTP_990)
    assert result is not None
    assert result != backend.desired(FTP_990)
    assert Assignment(TCP, 8021, "ftp") in result.assignments
    assert result == backend.read("r1")


def test_values_are_checked_before_anything_runs(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    table = verified(backend, FTP)
    start = len(fake.runs)
    with pytest.raises(UnsafeValue, match="assigned both ftp and irc"):
        backend.update("r1", table, [*FTP, Assignment(TCP, 21, "irc")])
    with pytest.raises(UnsafeValue, match="port 70000"):
        backend.update("r1", table, [*FTP, Assignment(TCP, 70000, "ftp")])
    assert fake.runs[start:] == []


def test_the_iptables_backends_never_update() -> None:
    table = desired_table(FTP)
    assert IptablesBackend("subprocess").update("r1", table, FTP_990) is None
    assert LegacyGuard(IptablesBackend("subprocess")).update("r1", table, FTP_990) is None


KINDS = [("ftp", TCP), ("irc", TCP), ("tftp", UDP), ("sip", UDP)]
lists = st.lists(
    st.builds(
        lambda kind, port, direction: Assignment(kind[1], port, kind[0], direction),
        st.sampled_from(KINDS),
        st.integers(1, 40),  # few ports: sequences share and move them
        st.sampled_from(list(Direction)),
    ),
    max_size=25,
    unique_by=lambda x: (x.protocol, x.port, x.direction),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(lists, min_size=2, max_size=5))
def test_updates_agree_with_full_syncs(steps: list[list[Assignment]]) -> None:
    """Whatever the sequence, an update either declines (writing nothing) or leaves exactly
    the desired table, and what it returns is what a full read sees."""
    fake = FakeNftables()
    fake.add_namespace("r1")
    backend = NftablesBackend(fake, owner=OWNER)
    table = verified(backend, steps[0])
    for wanted in steps[1:]:
        writes = fake.writes
        result = backend.update("r1", table, wanted)
        if result is None:
            assert fake.writes == writes
            table = verified(backend, wanted)
            continue
        assert fake.writes <= writes + 1
        assert result == backend.desired(wanted) == backend.read("r1")
        table = result


def test_odd_values_are_refused_or_left_to_the_full_sync(
    fake: FakeNftables, backend: NftablesBackend
) -> None:
    table = verified(backend, FTP)
    start = len(fake.runs)
    with pytest.raises(UnsafeValue, match="cannot render"):
        backend.update("r1", table, [("tcp", 21, "ftp")])  # type: ignore[list-item]
    odd = Assignment(TCP, 22, None, Direction.INGRESS)  # type: ignore[arg-type]
    with pytest.raises(UnsafeValue):
        backend.update("r1", table, [*FTP, odd])
    # A helper never seen is a set that would appear: declined; apply() then refuses it.
    assert backend.update("r1", table, [*FTP, Assignment(TCP, 22, "bad name")]) is None
    assert fake.runs[start:] == []
