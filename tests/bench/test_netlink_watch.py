"""The benchmarks' witness of "the kernel holds the port" (scripts/netlink_watch.py through
bench_support.KernelWatch) reports exactly what the kernel's transactions did to the `inet
cthm` table's sets: a wrong witness would make the API -> kernel figures wrong. Real nft
transactions in a namespace the test creates."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from cthm.testing import NamespaceFactory
from support.bench_runs import SCRIPTS

pytestmark = [pytest.mark.kernel]

sys.path.insert(0, str(SCRIPTS))
from bench_support import Committed, KernelWatch  # noqa: E402

TIMEOUT = 5.0


def nft(namespace: str, commands: str) -> None:
    subprocess.run(["ip", "netns", "exec", namespace, "nft", commands], check=True, timeout=30)


@pytest.fixture
def watched(netns: NamespaceFactory) -> Iterator[tuple[str, KernelWatch]]:
    namespace = netns.create("watch")
    watch = KernelWatch(namespace)
    try:
        yield namespace, watch
    finally:
        watch.close()


def next_commit(watch: KernelWatch) -> Committed:
    commit = watch.commits.get(timeout=TIMEOUT)
    assert isinstance(commit, Committed), commit
    return commit


def changes(commit: Committed) -> tuple[set[int], set[int]]:
    return set(commit.added), set(commit.removed)


def test_each_transaction_reports_the_ports_it_added_and_removed(
    watched: tuple[str, KernelWatch],
) -> None:
    namespace, watch = watched
    before = time.perf_counter()
    nft(
        namespace,
        "add table inet cthm; add set inet cthm ingress-ftp-tcp { type inet_service; };"
        " add element inet cthm ingress-ftp-tcp { 21, 30000 }",
    )
    after = time.perf_counter()
    first = next_commit(watch)
    assert changes(first) == ({21, 30000}, set())
    assert before <= first.at <= after + TIMEOUT  # the bench's clock (CLOCK_MONOTONIC)

    nft(namespace, "delete element inet cthm ingress-ftp-tcp { 30000 }")
    second = next_commit(watch)
    assert changes(second) == (set(), {30000})
    assert second.at > first.at

    # Another table's sets are not the table's; a transaction that touches none is no line.
    nft(namespace, "add table inet other; add set inet other s { type inet_service; }")
    nft(namespace, "add element inet other s { 30001 }")
    # A full sync replacing the table: what it does not put back is removed, in one commit.
    nft(
        namespace,
        "delete table inet cthm; add table inet cthm;"
        " add set inet cthm ingress-ftp-tcp { type inet_service; };"
        " add element inet cthm ingress-ftp-tcp { 21, 40000 }",
    )
    third = next_commit(watch)
    assert changes(third) == ({40000}, set())
    nft(namespace, "delete table inet cthm")
    fourth = next_commit(watch)
    assert changes(fourth) == (set(), {21, 40000})


def test_wait_for_finds_the_transaction_after_since_and_times_out_otherwise(
    watched: tuple[str, KernelWatch],
) -> None:
    namespace, watch = watched
    nft(
        namespace,
        "add table inet cthm; add set inet cthm s { type inet_service; };"
        " add element inet cthm s { 30000 }",
    )
    start = time.perf_counter()
    assert watch.wait_for(30000, True, 0.0, TIMEOUT) is not None
    # Already seen (and before `start`): not found again.
    assert watch.wait_for(30000, True, start, 0.3) is None
    start = time.perf_counter()
    nft(namespace, "delete element inet cthm s { 30000 }")
    seen = watch.wait_for(30000, False, start, TIMEOUT)
    assert seen is not None
    assert seen >= start
