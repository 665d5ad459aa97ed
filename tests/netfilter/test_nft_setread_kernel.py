"""Reading a port set by netlink (netfilter/setread.py, LibNftablesRunner.read_port_set) against
the real kernel: it says exactly what nft's own listing says of a set of cthm's kind, of any
size, and nothing (None: nft's listing decides) of any other set; a partial sync reads back
its touched sets this way, still from the kernel (drift by hand shows), and falls back to
`list set` for a set it cannot vouch for."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    LibNftablesRunner,
    NamespaceNotFound,
    NftablesBackend,
    NftNotFound,
)
from cthm.netfilter.model import KernelTable
from cthm.netfilter.parse import parse_set
from cthm.netfilter.runner import Generation
from cthm.testing import NamespaceFactory

from .conftest import nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000d"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
SET = "ingress-ftp-tcp"


@pytest.fixture
def router(netns: NamespaceFactory, lib: LibNftablesRunner) -> str:
    namespace = netns.create("set")
    lib.run(namespace, "add table inet cthm\n")  # the runner's context for the namespace
    return namespace


def nft_says(namespace: str, name: str = SET) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """What nft's own JSON listing of the set says (parse_set), by the nft binary."""
    return parse_set(nft(namespace, "-j", "list", "set", "inet", "cthm", name), name)


@pytest.mark.parametrize("flags", ["flags dynamic; ", ""], ids=["dynamic", "bitmap"])
@pytest.mark.parametrize("ports", [[21], [1, 21, 65535], list(range(1000, 2000)), "spread"])
def test_reads_what_nft_lists(
    lib: LibNftablesRunner, router: str, ports: list[int] | str, flags: str
) -> None:
    """cthm's sets (no flags: the kernel's bitmap backend) and `flags dynamic` ones (a hash
    backend, written by hand or by a development build), which nft's JSON shows alike."""
    # "spread": 6000 ports, so the kernel's dump comes in many messages.
    wanted = list(range(2, 60000, 10)) if ports == "spread" else ports
    assert isinstance(wanted, list)
    elements = ", ".join(map(str, wanted))
    nft(router, "-f", "-", stdin=f"add set inet cthm {SET} {{ type inet_service; {flags}}}\n")
    nft(router, "-f", "-", stdin=f"add element inet cthm {SET} {{ {elements} }}\n")
    read = lib.read_port_set(router, "cthm", SET)
    assert read == tuple(sorted(wanted))
    assert nft_says(router) == (read, ())


@pytest.mark.parametrize(
    "definition",
    [
        "{ type inet_service; flags interval; elements = { 21, 30-40 }; }",
        "{ type inet_service; flags timeout; elements = { 21 timeout 1h }; }",
        "{ type inet_service; flags dynamic, timeout; elements = { 21 }; }",
        "{ type inet_service; timeout 1h; elements = { 21 }; }",
        '{ type inet_service; comment "by hand"; elements = { 21 }; }',
        "{ type inet_service; size 100; elements = { 21 }; }",
        "{ type inet_service; policy memory; elements = { 21 }; }",
        "{ type inet_service; counter; elements = { 21 }; }",
        '{ type inet_service; elements = { 21 comment "by hand" }; }',
        "{ typeof tcp dport; elements = { 21 }; }",
        "{ type ipv4_addr; elements = { 198.18.0.1 }; }",
        "{ type inet_service; }",  # empty: cthm renders no empty set
    ],
)
def test_any_other_set_is_left_to_nft(lib: LibNftablesRunner, router: str, definition: str) -> None:
    nft(router, "-f", "-", stdin=f"add set inet cthm {SET} {definition}\n")
    assert lib.read_port_set(router, "cthm", SET) is None


def test_no_set_no_table_no_context(
    lib: LibNftablesRunner, router: str, netns: NamespaceFactory
) -> None:
    assert lib.read_port_set(router, "cthm", SET) is None  # no such set
    assert lib.read_port_set(router, "other", SET) is None  # no such table
    fresh = netns.create("fresh")
    definition = f"{SET} {{ type inet_service; elements = {{ 21 }}; }}"
    nft(fresh, "-f", "-", stdin=f"add table inet cthm\nadd set inet cthm {definition}\n")
    assert lib.read_port_set(fresh, "cthm", SET) is None  # no context yet: nft decides
    lib.run(fresh, "list tables")
    assert lib.read_port_set(fresh, "cthm", SET) == (21,)
    netns.delete(fresh)
    with pytest.raises(NamespaceNotFound):
        lib.read_port_set(fresh, "cthm", SET)
    assert [key[0] for key in lib.cached_contexts()] == [router]  # the gone one is freed


def test_table_exists(lib: LibNftablesRunner, netns: NamespaceFactory) -> None:
    namespace = netns.create("tbl")
    assert lib.table_exists(namespace, "cthm") is False  # its context is made for it
    assert [key[0] for key in lib.cached_contexts()] == [namespace]
    nft(namespace, "add", "table", "inet", "cthm")
    nft(namespace, "add", "table", "ip", "other")
    assert lib.table_exists(namespace, "cthm") is True
    assert lib.table_exists(namespace, "other") is False  # an ip table, not inet
    nft(namespace, "delete", "table", "inet", "cthm")
    assert lib.table_exists(namespace, "cthm") is False
    netns.delete(namespace)
    with pytest.raises(NamespaceNotFound):
        lib.table_exists(namespace, "cthm")


class Spy:
    """Passes every call to a real LibNftablesRunner and records it (a spy, not a stand-in)."""

    def __init__(self, inner: LibNftablesRunner) -> None:
        self.inner = inner
        self.ran: list[str] = []  # first lines of what nft ran
        self.set_reads: list[tuple[str, tuple[int, ...] | None]] = []
        self.probes: list[tuple[str, bool | None]] = []

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        self.ran.append(commands.splitlines()[0])
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
        if out is not None:
            self.ran.append(commands.splitlines()[0])
        return before, after, out

    def read_port_set(self, namespace: str, table: str, name: str) -> tuple[int, ...] | None:
        ports = self.inner.read_port_set(namespace, table, name)
        self.set_reads.append((name, ports))
        return ports

    def run_and_read_sets(
        self, namespace: str, commands: str, table: str, names: Sequence[str]
    ) -> list[tuple[int, ...] | None]:
        self.ran.append(commands.splitlines()[0])
        read = self.inner.run_and_read_sets(namespace, commands, table, names)
        self.set_reads.extend(zip(names, read, strict=True))
        return read

    def table_exists(self, namespace: str, table: str) -> bool | None:
        found = self.inner.table_exists(namespace, table)
        self.probes.append((table, found))
        return found

    def close(self) -> None:
        """The inner runner belongs to the test."""


def applied(
    lib: LibNftablesRunner, netns: NamespaceFactory, label: str
) -> tuple[str, Spy, NftablesBackend, KernelTable | None]:
    """A namespace of its own with FTP applied through a spy of `lib`, and the table read back."""
    router = netns.create(label)
    spy = Spy(lib)
    backend = NftablesBackend(spy, owner=OWNER)
    backend.apply(router, FTP)
    return router, spy, backend, backend.read(router)


def test_partial_sync_reads_back_by_netlink_from_the_kernel(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    router, spy, backend, table = applied(lib, netns, "upd")
    assert table == backend.desired(FTP)
    assert table is not None
    nft(router, "add", "element", "inet", "cthm", SET, "{ 8021 }")  # drift, by hand
    spy.ran.clear()
    wanted = [*FTP, Assignment(TCP, 990, "ftp")]
    result = backend.update(router, table, wanted)
    assert spy.ran == [f"add element inet cthm {SET} {{ 990 }}"]  # no `list set` run
    assert spy.set_reads == [(SET, (21, 990, 2121, 8021))]
    assert result is not None
    assert Assignment(TCP, 8021, "ftp") in result.assignments  # the kernel's, not our input
    assert result == backend.read(router)
    assert result.clean


def test_partial_sync_falls_back_to_nft_for_a_set_it_cannot_vouch_for(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    router, spy, backend, table = applied(lib, netns, "odd")
    assert table is not None
    nft(router, "add", "element", "inet", "cthm", SET, '{ 8021 comment "by hand" }')
    spy.ran.clear()
    result = backend.update(router, table, [*FTP, Assignment(TCP, 990, "ftp")])
    assert spy.set_reads == [(SET, None)]
    assert spy.ran[-1] == f"list set inet cthm {SET}"
    assert result is not None
    assert not result.clean  # nft's listing names what is odd in it


def test_first_read_of_a_namespace_without_a_table_runs_no_nft(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    empty, held = netns.create("empty"), netns.create("held")
    nft(held, "-f", "-", stdin="add table inet cthm\nadd table inet filter\n")
    spy = Spy(lib)
    backend = NftablesBackend(spy, owner=OWNER)
    assert backend.read(empty) is None
    assert spy.ran == []
    assert spy.probes == [("cthm", False)]
    table = backend.read(held)  # there: listed, as before
    assert table is not None
    assert spy.ran == ["list table inet cthm", "list table inet cthm"]  # JSON, then the owner
    spy.ran.clear()
    spy.probes.clear()
    backend.apply(empty, FTP)
    assert backend.read(empty) == backend.desired(FTP)  # after our apply: no probe, listed
    assert spy.probes == []
    assert spy.ran == [spy.ran[0], "list table inet cthm"]
    nft(empty, "delete", "table", "inet", "cthm")
    assert backend.read(empty) is None  # the generation moved: listed, found gone


def test_a_refused_partial_sync_reads_nothing_and_changes_nothing(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    router, spy, backend, table = applied(lib, netns, "refused")
    assert table is not None
    nft(router, "delete", "element", "inet", "cthm", SET, "{ 2121 }")
    before = nft(router, "list", "ruleset")
    spy.set_reads.clear()
    with pytest.raises(NftNotFound):  # 2121 is already gone: one transaction, refused whole
        backend.update(router, table, [FTP[0], Assignment(TCP, 990, "ftp"), FTP[2]])
    assert spy.set_reads == []
    assert nft(router, "list", "ruleset") == before
