"""Generation-tracked reads (issue 14) against the real kernel, libnftables runner: a table no
commit touched since it was listed is not listed again, yet every commit (by hand, by another
deployment, in a namespace recreated under the same name) is seen by the next read; the owner
of a table this backend just wrote is known without a text listing, and only of that table."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter import LibNftablesRunner, NftablesBackend
from cthm.netfilter.runner import Generation
from cthm.testing import NamespaceFactory

from .conftest import nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000b"
OTHER = "6f1d2c3b-0000-4000-8000-00000000000c"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
LIST = "list table inet cthm"
CREATE = f'add table inet cthm {{ comment "cthm:{OWNER}"; }}'  # a table made anew
T = TypeVar("T")


class TrackedSpy:
    """Passes every call to a real LibNftablesRunner and records what ran (a spy): (commands,
    as JSON, whether nft ran it: False when the generation said nothing changed)."""

    def __init__(self, inner: LibNftablesRunner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, bool, bool]] = []

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        self.calls.append((commands, json, True))
        return self.inner.run(namespace, commands, json=json, dry_run=dry_run)

    def run_tracked(
        self,
        namespace: str,
        commands: str,
        *,
        json: bool = False,
        unless: Generation | None = None,
    ) -> tuple[Generation | None, Generation | None, str | None]:
        before, after, out = self.inner.run_tracked(namespace, commands, json=json, unless=unless)
        self.calls.append((commands, json, out is not None))
        return before, after, out

    def ran(self) -> list[tuple[str, bool]]:
        """(first line of the commands, as JSON) of what nft ran since the last clear."""
        return [(c.splitlines()[0], j) for c, j, ran in self.calls if ran]

    def close(self) -> None:
        """The inner runner belongs to the test."""


@pytest.fixture
def spy(lib: LibNftablesRunner) -> TrackedSpy:
    return TrackedSpy(lib)


@pytest.fixture
def backend(spy: TrackedSpy) -> NftablesBackend:
    return NftablesBackend(spy, owner=OWNER)


def test_generation_moves_on_every_commit_and_not_on_reads(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    namespace = netns.create("gen")
    first, same, _ = lib.run_tracked(namespace, "list tables", json=True)
    assert first is not None
    assert same == first
    before, after, _ = lib.run_tracked(namespace, "add table inet cthm")
    assert before == first
    assert after is not None
    assert after.context == first.context
    assert after.id == first.id + 1
    # Asked with the current generation: nothing runs.
    again, unchanged, out = lib.run_tracked(namespace, LIST, json=True, unless=after)
    assert (again, unchanged, out) == (after, after, None)
    nft(namespace, "add", "table", "ip", "other")  # any commit in the namespace, any table
    moved, _, out = lib.run_tracked(namespace, LIST, json=True, unless=after)
    assert moved is not None
    assert moved.id > after.id
    assert out is not None
    assert '"name": "cthm"' in out


def test_an_untouched_table_is_not_listed_again_and_a_change_by_hand_is_seen(
    backend: NftablesBackend, spy: TrackedSpy, netns: NamespaceFactory
) -> None:
    namespace = netns.create("skip")
    backend.apply(namespace, FTP)
    assert backend.read(namespace) == backend.desired(FTP)
    spy.calls.clear()
    for _ in range(3):
        assert backend.read(namespace) == backend.desired(FTP)
    assert spy.ran() == []  # three reads, not one listing
    nft(namespace, "add", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 990 }")
    have = backend.read(namespace)
    assert have is not None
    assert Assignment(TCP, 990, "ftp") in have.assignments
    assert have.owner == OWNER  # the same table: its owner known by its handle
    assert spy.ran() == [(LIST, True)]


def test_the_owner_of_our_own_apply_is_known_without_a_text_listing(
    backend: NftablesBackend, spy: TrackedSpy, netns: NamespaceFactory
) -> None:
    namespace = netns.create("own")
    spy.calls.clear()
    backend.apply(namespace, FTP)
    table = backend.read(namespace)
    assert table == backend.desired(FTP)
    assert table is not None
    assert table.owner == OWNER
    assert [json for _, json in spy.ran()] == [False, True]  # the apply, one JSON listing


def test_a_table_replaced_after_our_apply_is_read_with_its_own_owner(
    backend: NftablesBackend, netns: NamespaceFactory
) -> None:
    namespace = netns.create("theirs")
    backend.apply(namespace, FTP)
    # Another deployment replaces the table between our apply and our read.
    nft(
        namespace,
        "-f",
        "-",
        stdin=f'delete table inet cthm\nadd table inet cthm {{ comment "cthm:{OTHER}"; }}\n',
    )
    have = backend.read(namespace)
    assert have is not None
    assert have.owner == OTHER
    assert have.assignments == ()
    # Unmarked (written by hand) after a read of ours.
    nft(namespace, "-f", "-", stdin="delete table inet cthm\nadd table inet cthm\n")
    have = backend.read(namespace)
    assert have is not None
    assert have.owner is None


def test_a_namespace_recreated_under_the_same_name_is_read_afresh(
    backend: NftablesBackend, netns: NamespaceFactory
) -> None:
    namespace = netns.create("again")
    backend.apply(namespace, FTP)
    assert backend.read(namespace) == backend.desired(FTP)
    netns.delete(namespace)
    assert netns.create("again") == namespace
    assert backend.read(namespace) is None  # the new namespace holds no table
    backend.apply(namespace, FTP[:1])
    assert backend.read(namespace) == backend.desired(FTP[:1])


def test_output_direction_and_partial_updates_keep_reads_exact(
    backend: NftablesBackend, netns: NamespaceFactory
) -> None:
    namespace = netns.create("upd")
    wanted = [*FTP, Assignment(TCP, 21, "irc", Direction.OUTPUT)]
    backend.apply(namespace, wanted)
    verified = backend.read(namespace)
    assert verified == backend.desired(wanted)
    changed = [*wanted[:2], Assignment(TCP, 6667, "irc", Direction.OUTPUT)]
    changed.append(Assignment(UDP, 69, "tftp"))
    after = backend.update(namespace, verified, changed)
    assert after == backend.desired(changed)
    # The update committed: the next full read lists again and sees it.
    assert backend.read(namespace) == backend.desired(changed)


class BatchingSpy(TrackedSpy):
    """TrackedSpy that also lets the backend batch its calls in one visit and probe tables
    (as the agent's runner does)."""

    def batch(self, job: Callable[[], T], namespace: str | None = None) -> T:
        return self.inner.batch(job, namespace)

    def table_exists(self, namespace: str, table: str) -> bool | None:
        return self.inner.table_exists(namespace, table)

    def generation(self, namespace: str) -> Generation | None:
        return self.inner.generation(namespace)


def test_a_sync_in_one_visit_knows_its_own_commit_without_a_text_listing(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    """sync()'s read, apply and read-back share one visit of the namespace, where a call's
    generation before is the one the previous call left: the read-back still knows the table
    is the one its apply committed (its owner, no text listing), and a commit by anyone else
    is still seen."""
    spy = BatchingSpy(lib)
    backend = NftablesBackend(spy, owner=OWNER)
    namespace = netns.create("visit")
    want = backend.desired(FTP)
    before, after = backend.sync(namespace, FTP, want)
    assert (before, after) == (None, want)
    assert after is not None
    assert after.owner == OWNER
    # The apply (into no table: without the head that replaces one, render.into_absent_table),
    # and one listing: its text, equal to the desired table's (listing.py).
    assert spy.ran() == [(CREATE, False), (LIST, False)]
    spy.calls.clear()
    assert backend.sync(namespace, FTP, want) == (want, None)
    assert spy.ran() == []
    # Another deployment's table in its place: listed, replaced, and ours again after.
    nft(
        namespace,
        "-f",
        "-",
        stdin=f'delete table inet cthm\nadd table inet cthm {{ comment "cthm:{OTHER}"; }}\n',
    )
    before, after = backend.sync(namespace, FTP, want)
    assert before is not None
    assert before.owner == OTHER
    assert after == want
    assert after is not None
    assert after.owner == OWNER
    # Deleted by hand: known by netlink that it is gone (no failing listing), written again.
    nft(namespace, "delete", "table", "inet", "cthm")
    spy.calls.clear()
    assert backend.sync(namespace, FTP, want) == (None, want)
    assert spy.ran() == [(CREATE, False), (LIST, False)]
