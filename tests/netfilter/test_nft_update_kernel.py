"""Partial sync and the layout migration against the real kernel (both runners): element adds and
deletes in one transaction, None when a set would appear or go, a refused transaction leaves the
kernel unchanged, and a table of the previous layout is replaced in one batch."""

from __future__ import annotations

import os
import selectors
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter import (
    FakeNftables,
    LibNftablesRunner,
    NftablesBackend,
    NftNotFound,
    Transaction,
)
from cthm.testing import NamespaceFactory

from .conftest import FOREIGN_RULESET, CountingRunner, nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OUT = Direction.OUTPUT
OWNER = "6f1d2c3b-0000-4000-8000-00000000000a"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
MIXED = [*FTP, Assignment(TCP, 21, "irc", OUT), Assignment(TCP, 1720, "Q.931", OUT)]


@pytest.fixture
def backend(runner: CountingRunner) -> NftablesBackend:
    return NftablesBackend(runner, owner=OWNER)


@pytest.fixture
def router(netns: NamespaceFactory) -> str:
    namespace = netns.create("upd")
    nft(namespace, "-f", "-", stdin=FOREIGN_RULESET)
    return namespace


def test_update_adds_and_deletes_elements_and_reads_back_only_those_sets(
    backend: NftablesBackend, runner: CountingRunner, router: str
) -> None:
    backend.apply(router, MIXED)
    table = backend.read(router)
    assert table == backend.desired(MIXED)
    assert table is not None
    wanted = [a for a in MIXED if a.port != 2121] + [
        Assignment(TCP, 990, "ftp"),
        Assignment(TCP, 11720, "Q.931", OUT),
    ]
    runner.calls.clear()
    result = backend.update(router, table, wanted)
    assert result == backend.desired(wanted)
    assert runner.commands == [
        (
            "delete element inet cthm ingress-ftp-tcp { 2121 }\n"
            "add element inet cthm ingress-ftp-tcp { 990 }\n"
            "add element inet cthm output-Q.931-tcp { 11720 }\n",
            False,
        ),
        ("list set inet cthm ingress-ftp-tcp", True),
        ("list set inet cthm output-Q.931-tcp", True),
    ]
    assert backend.read(router) == result
    listed = nft(router, "list", "set", "inet", "cthm", "ingress-ftp-tcp")
    assert "elements = { 21, 990 }" in listed
    assert "filter" in nft(router, "list", "tables")  # the foreign tables stay


@pytest.mark.parametrize(
    "wanted",
    [
        [*FTP, Assignment(TCP, 6667, "irc")],  # a helper object and a set would appear
        FTP[:2],  # the tftp set, object and rule would go
        [*FTP, Assignment(TCP, 21, "ftp", OUT)],  # the output chain would appear
    ],
    ids=["set appears", "set goes", "chain appears"],
)
def test_update_declines_what_only_a_full_sync_can_do(
    backend: NftablesBackend, runner: CountingRunner, router: str, wanted: list[Assignment]
) -> None:
    backend.apply(router, FTP)
    table = backend.read(router)
    assert table is not None
    before = nft(router, "list", "ruleset")
    runner.calls.clear()
    assert backend.update(router, table, wanted) is None
    assert runner.commands == []
    assert nft(router, "list", "ruleset") == before


def test_a_refused_update_leaves_the_kernel_unchanged(
    backend: NftablesBackend, router: str
) -> None:
    backend.apply(router, FTP)
    table = backend.read(router)
    assert table is not None
    nft(router, "delete", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 2121 }")
    before = nft(router, "list", "ruleset")
    wanted = [FTP[0], Assignment(TCP, 990, "ftp"), FTP[2]]  # 2121 out (already gone), 990 in
    with pytest.raises(NftNotFound):
        backend.update(router, table, wanted)
    assert nft(router, "list", "ruleset") == before  # 990 was not added: one transaction
    # The agent's way out: a full sync.
    backend.apply(router, wanted)
    assert backend.read(router) == backend.desired(wanted)


def test_drift_in_a_touched_set_shows_in_the_read_back(
    backend: NftablesBackend, router: str
) -> None:
    backend.apply(router, FTP)
    table = backend.read(router)
    assert table is not None
    nft(router, "add", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 8021 }")
    wanted = [*FTP, Assignment(TCP, 990, "ftp")]
    result = backend.update(router, table, wanted)
    assert result is not None
    assert result != backend.desired(wanted)
    assert Assignment(TCP, 8021, "ftp") in result.assignments
    assert result == backend.read(router)


def test_a_thousand_ports_one_at_a_time(backend: NftablesBackend, router: str) -> None:
    """Large sets: one port in, one port out, each verified (no timing asserted here; the
    figures are `make bench`'s)."""
    many = [Assignment(TCP, 10000 + i, "ftp") for i in range(1000)]
    backend.apply(router, many)
    table = backend.read(router)
    assert table == backend.desired(many)
    assert table is not None
    more = [*many, Assignment(TCP, 21, "ftp")]
    table = backend.update(router, table, more)
    assert table == backend.desired(more)
    assert table is not None
    fewer = more[1:]
    assert backend.update(router, table, fewer) == backend.desired(fewer) == backend.read(router)


def previous_layout(assignments: list[Assignment]) -> str:
    """What a cthm before named sets wrote: one anonymous map rule per protocol and direction."""
    tx = Transaction()
    tx.add_table()
    tx.delete_table()
    tx.add_table(OWNER)
    for helper_type, protocol in sorted({(a.helper, a.protocol) for a in assignments}):
        tx.add_helper(helper_type, protocol)
    for direction in Direction:
        mine = [a for a in assignments if a.direction is direction]
        if mine:
            tx.add_chain(direction)
        for protocol in sorted({a.protocol for a in mine}):
            entries = [(a.port, f"{a.helper}-{protocol}") for a in mine if a.protocol is protocol]
            tx.add_helper_map(protocol, entries, direction)
    return str(tx)


class Monitor:
    """`nft monitor` in a namespace: every change the kernel commits, and one
    `# new generation N` line per committed batch."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        # Line-buffered: nft's stdio would otherwise hold its output back in a pipe.
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "stdbuf", "-oL", "nft", "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        self.fd = self.process.stdout.fileno()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.fd, selectors.EVENT_READ)
        self.pending = b""
        self.marks = 0

    def lines_until_mark(self, timeout: float = 10.0) -> list[str]:
        """Commits a marker batch and returns the lines seen before it (bounded in time)."""
        self.marks += 1
        mark = f"cthm_mark{self.marks}"
        nft(self.namespace, "-f", "-", stdin=f"add table ip {mark}\ndelete table ip {mark}\n")
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\n" in self.pending:
                raw, self.pending = self.pending.split(b"\n", 1)
                line = raw.decode().rstrip()
                if line == f"delete table ip {mark}":
                    return lines[:-1]  # without the marker's own `add table`
                if not lines and line.startswith("# new generation") and self.marks > 1:
                    continue  # the end of the previous marker's batch
                lines.append(line)
            if self.selector.select(timeout=0.2):
                self.pending += os.read(self.fd, 65536)
        raise AssertionError(f"nft monitor did not show {mark} within {timeout}s: {lines}")

    def sync(self) -> None:
        """Waits until the monitor is listening: markers until one is seen (bounded)."""
        for _ in range(20):
            try:
                self.lines_until_mark(timeout=0.5)
                return
            except AssertionError:
                continue
        raise AssertionError("nft monitor never started listening")

    def close(self) -> None:
        self.selector.close()
        self.process.kill()  # our own child, by its pid
        self.process.wait(timeout=10)


def test_a_table_of_the_previous_layout_is_migrated_in_one_batch(
    backend: NftablesBackend, runner: CountingRunner, router: str
) -> None:
    """No moment in which a bound port has no helper: the old rules' deletion and the new
    rules' creation are one kernel batch (one `new generation`), and a migration that fails
    leaves the old layout whole."""
    nft(router, "-f", "-", stdin=previous_layout(MIXED))
    old = backend.read(router)
    assert old is not None
    assert old.assignments == backend.desired(MIXED).assignments
    assert not old.clean
    assert backend.update(router, old, MIXED) is None  # only a full sync migrates

    before = nft(router, "list", "ruleset")
    failing = [*MIXED, Assignment(TCP, 22, "nosuchhelper")]
    with pytest.raises(NftNotFound):
        backend.apply(router, failing)
    assert nft(router, "list", "ruleset") == before

    monitor = Monitor(router)
    try:
        monitor.sync()
        runner.calls.clear()
        backend.apply(router, MIXED)
        seen = monitor.lines_until_mark()
    finally:
        monitor.close()
    assert len(runner.calls) == 1
    generations = [line for line in seen if line.startswith("# new generation")]
    assert len(generations) == 1, seen
    assert seen[-1] == generations[0]  # everything below happened in that one batch
    assert "delete table inet cthm" in seen
    assert 'add rule inet cthm prerouting tcp dport @ingress-ftp-tcp ct helper set "ftp-tcp"' in (
        seen
    )
    assert backend.read(router) == backend.desired(MIXED)


KINDS = [("ftp", TCP), ("irc", TCP), ("tftp", UDP), ("Q.931", TCP)]
lists = st.lists(
    st.builds(
        lambda kind, port, direction: Assignment(kind[1], port, kind[0], direction),
        st.sampled_from(KINDS),
        st.integers(1, 30),
        st.sampled_from(list(Direction)),
    ),
    max_size=20,
    unique_by=lambda x: (x.protocol, x.port, x.direction),
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(lists, min_size=2, max_size=4))
def test_kernel_and_fake_agree_on_every_update(
    netns: NamespaceFactory, lib_runner: LibNftablesRunner, steps: list[list[Assignment]]
) -> None:
    """The same sequence of syncs on the kernel and on the fake: the same answers, the same
    tables (so the agent's tests on the fake mean what they say)."""
    namespace = netns.name("agree")
    if namespace not in netns.created:
        netns.create("agree")
    fake = FakeNftables()
    fake.add_namespace(namespace)
    real, mock = NftablesBackend(lib_runner, owner=OWNER), NftablesBackend(fake, owner=OWNER)
    tables = []
    for backend in (real, mock):
        backend.apply(namespace, steps[0])
        tables.append(backend.read(namespace))
    assert tables[0] == tables[1] == real.desired(steps[0])
    for wanted in steps[1:]:
        results = [
            b.update(namespace, t, wanted) for b, t in zip((real, mock), tables, strict=True)
        ]
        assert results[0] == results[1]
        if results[0] is None:
            for backend in (real, mock):
                backend.apply(namespace, wanted)
            tables = [real.read(namespace), mock.read(namespace)]
        else:
            tables = results
        assert tables[0] == tables[1] == real.desired(wanted) == real.read(namespace)
