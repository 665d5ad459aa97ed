"""Fewer hand-offs to the libnftables thread (issue 14), against the real kernel: a batch()
job runs on the runner's thread and its own calls run there at once; NftablesBackend.sync()
reads, applies when different and reads the whole table back (in one batch), with the errors
of those calls; a namespace's generation is read from any thread on its kept socket, so a
no-op sync of an unchanged table needs the runner's thread not at all."""

from __future__ import annotations

import os
import threading

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    LibNftablesRunner,
    NamespaceNotFound,
    NftablesBackend,
    NftError,
    UnsafeValue,
)
from cthm.netfilter.netns import NETNS_DIR
from cthm.netfilter.runner import Generation
from cthm.testing import NamespaceFactory

from .conftest import nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000e"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]


@pytest.fixture
def backend(lib: LibNftablesRunner) -> NftablesBackend:
    return NftablesBackend(lib, owner=OWNER)


def listed_ports(namespace: str, name: str = "ingress-ftp-tcp") -> str:
    return nft(namespace, "list", "set", "inet", "cthm", name)


def test_a_batch_runs_on_the_runner_thread_and_its_calls_run_inline(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    namespace = netns.create("batch")

    def job() -> tuple[int, str, bool | None]:
        lib.run(namespace, "add table inet cthm\n")
        listed = lib.run(namespace, "list tables")
        return threading.get_native_id(), listed, lib.table_exists(namespace, "cthm")

    thread, listed, exists = lib.batch(job)
    assert thread == lib.worker_native_id
    assert "table inet cthm" in listed
    assert exists is True

    def failing() -> None:
        lib.run(namespace + "-gone", "list tables")

    with pytest.raises(NamespaceNotFound):
        lib.batch(failing)
    assert "table inet cthm" in lib.run(namespace, "list tables")  # still serving


def test_sync_applies_reads_back_and_then_changes_nothing(
    backend: NftablesBackend, netns: NamespaceFactory
) -> None:
    namespace = netns.create("sync")
    want = backend.desired(FTP)
    assert backend.sync(namespace, FTP, want) == (None, want)  # applied, read back
    assert "2121" in listed_ports(namespace)
    assert backend.sync(namespace, FTP, want) == (want, None)  # nothing applied
    # Drift by hand is seen (the generation moved) and repaired.
    nft(namespace, "delete", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 2121 }")
    before, after = backend.sync(namespace, FTP, want)
    assert before is not None
    assert Assignment(TCP, 2121, "ftp") not in before.assignments
    assert after == want
    assert "2121" in listed_ports(namespace)
    # A different desired state replaces the table.
    fewer = FTP[:1]
    assert backend.sync(namespace, fewer, backend.desired(fewer)) == (want, backend.desired(fewer))
    assert "2121" not in listed_ports(namespace)


def test_sync_raises_what_its_calls_raise_and_leaves_the_table(
    backend: NftablesBackend, netns: NamespaceFactory
) -> None:
    namespace = netns.create("err")
    want = backend.desired(FTP)
    backend.sync(namespace, FTP, want)
    with pytest.raises(NamespaceNotFound):
        backend.sync(namespace + "-gone", FTP, want)
    with pytest.raises(UnsafeValue):
        backend.sync(namespace, [Assignment(TCP, 21, 'ftp"; flush ruleset; "')], None)
    unknown = [Assignment(TCP, 21, "nosuchhelper")]
    with pytest.raises(NftError):  # the kernel has no such helper: one transaction refused
        backend.sync(namespace, unknown, backend.desired(unknown))
    assert backend.read(namespace) == want
    assert backend.sync(namespace, FTP, want) == (want, None)


def test_the_generation_is_read_from_any_thread_on_the_namespace_instance(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    namespace = netns.create("gen")
    assert lib.generation(namespace) is None  # no context of it yet: not guessed
    assert lib.generation(namespace + "-gone") is None
    _, after, _ = lib.run_tracked(namespace, "add table inet cthm")
    assert after is not None
    assert lib.generation(namespace) == after
    nft(namespace, "add", "table", "ip", "other")
    moved = lib.generation(namespace)
    assert moved is not None
    assert (moved.context, moved.id) == (after.context, after.id + 1)
    # Asked by several threads while the runner's thread commits and asks on the same
    # socket: every answer is this context's, never out of step.
    answers: list[Generation | None] = []

    def ask() -> None:
        answers.extend(lib.generation(namespace) for _ in range(200))

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for thread in askers:
        thread.start()
    for port in range(1, 21):
        lib.run_tracked(namespace, f"add table inet t{port}")
    for thread in askers:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in askers)
    assert len(answers) == 400
    assert all(a is not None and a.context == after.context for a in answers)
    last = lib.generation(namespace)
    assert last is not None
    assert last.id == moved.id + 20
    # The same name, another namespace: its generation is not the old context's.
    netns.delete(namespace)
    assert netns.create("gen") == namespace
    assert lib.generation(namespace) is None
    _, fresh, _ = lib.run_tracked(namespace, "list tables")
    assert fresh is not None
    assert fresh.context != after.context
    assert lib.generation(namespace) == fresh


def test_a_noop_sync_of_an_unchanged_table_needs_not_the_runner_thread(
    lib: LibNftablesRunner, backend: NftablesBackend, netns: NamespaceFactory
) -> None:
    namespace = netns.create("noop")
    want = backend.desired(FTP)
    backend.sync(namespace, FTP, want)
    release = threading.Event()
    busy = threading.Thread(target=lambda: lib.batch(lambda: release.wait(30)))
    busy.start()  # the runner's thread is held by that job until released
    try:
        results: list[object] = []
        syncer = threading.Thread(target=lambda: results.append(backend.sync(namespace, FTP, want)))
        syncer.start()
        syncer.join(timeout=10)
        assert results == [(want, None)]  # answered while the runner's thread was held
    finally:
        release.set()
        busy.join(timeout=30)
    # A change by hand: that sync needs the runner's thread again, and sees it.
    nft(namespace, "add", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 990 }")
    before, after = backend.sync(namespace, FTP, want)
    assert before is not None
    assert Assignment(TCP, 990, "ftp") in before.assignments
    assert after == want


def test_a_visit_enters_once_and_calls_on_other_namespaces_land_in_theirs(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    """batch(job, namespace): the job's calls on that namespace run inside it without entering
    it again; a call on another namespace from inside the visit lands in that one, and the
    visit goes on in its own; afterwards the runner's thread is back in its own namespace."""
    visited, other = netns.create("visit"), netns.create("elsewhere")

    def job() -> tuple[bool | None, bool | None]:
        lib.run(visited, "add table inet first\n")
        lib.run(other, "add table inet second\n")
        lib.run(visited, "add table inet third\n")
        return lib.table_exists(visited, "third"), lib.table_exists(other, "third")

    assert lib.batch(job, visited) == (True, False)
    assert nft(visited, "list", "tables").split() == [
        "table", "inet", "first", "table", "inet", "third"
    ]  # fmt: skip
    assert nft(other, "list", "tables").split() == ["table", "inet", "second"]
    home = os.readlink("/proc/self/ns/net")
    assert lib.batch(lambda: os.readlink("/proc/thread-self/ns/net")) == home
    assert lib.batch(lambda: os.readlink("/proc/thread-self/ns/net"), visited) != home
    assert lib.batch(lambda: os.readlink("/proc/thread-self/ns/net")) == home


def test_a_visit_of_a_missing_namespace_fails_as_its_calls_do(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    gone = netns.create("gone") + "-never"
    with pytest.raises(NamespaceNotFound):
        lib.batch(lambda: lib.run(gone, "list tables"), gone)
    with pytest.raises(ValueError, match="job's own"):
        lib.batch(lambda: (_ for _ in ()).throw(ValueError("the job's own error")), gone)


def test_a_name_that_is_no_longer_its_namespace_has_no_generation(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    """generation() knows the instance by one lstat of its name: a symbolic link (even to a
    namespace with a context) or a plain file under that name is never answered for."""
    name, other = netns.create("gname"), netns.create("gother")
    lib.run_tracked(name, "add table inet cthm")
    lib.run_tracked(other, "add table inet cthm")
    assert lib.generation(name) is not None
    netns.delete(name)
    path = NETNS_DIR / name
    try:
        path.symlink_to(NETNS_DIR / other)
        assert lib.generation(name) is None
        assert lib.generation(other) is not None
        path.unlink()
        path.touch()  # as `ip netns add` leaves it before its mount
        assert lib.generation(name) is None
    finally:
        if path.is_symlink() or (path.is_file() and not path.is_mount()):
            path.unlink()


def test_a_visit_frees_the_contexts_of_namespaces_gone_as_any_entry_does(
    netns: NamespaceFactory,
) -> None:
    runner = LibNftablesRunner(prune_interval=0.0)  # every entry prunes
    try:
        gone, visited = netns.create("pgone"), netns.create("pvisit")
        runner.run(gone, "add table inet cthm\n")
        netns.delete(gone)
        assert runner.batch(lambda: runner.table_exists(visited, "cthm"), visited) is False
        assert [key[0] for key in runner.cached_contexts()] == [visited]
    finally:
        runner.close()
