"""The two runners: namespaces, threads, contexts, argv, PATH, timeouts, error translation."""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    LibNftablesRunner,
    LibraryUnavailable,
    NamespaceNotFound,
    NftablesBackend,
    NftBusy,
    NftError,
    NftExists,
    NftNotFound,
    NftOther,
    SubprocessRunner,
    UnsafeValue,
    make_runner,
    translate_error,
)
from cthm.testing import NamespaceFactory

from .conftest import nft

kernel = pytest.mark.kernel


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def worker_netns(runner: LibNftablesRunner) -> int:
    tid = runner.worker_native_id
    assert tid is not None
    return netns_inode(f"/proc/self/task/{tid}/ns/net")


# -- error translation (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("Error: Could not process rule: No such file or directory\ndelete table", NftNotFound),
        ("Error: No such file or directory\nlist table inet cthm", NftNotFound),
        ("Error: Could not process rule: File exists\ncreate table", NftExists),
        ("Error: Could not process rule: Device or resource busy\ndelete ct", NftBusy),
        ("Error: syntax error, unexpected newline", NftOther),
        ("Error: Could not process rule: Operation not permitted", NftOther),
        ("", NftOther),
        # two errors: the first one decides
        ("Error: ...: Device or resource busy\nError: ...: No such file or directory", NftBusy),
    ],
)
def test_translate_error(message: str, cls: type[NftError]) -> None:
    error = translate_error(message, namespace="qrouter-x")
    assert type(error) is cls
    assert error.namespace == "qrouter-x"
    assert error.message == (message.strip() or "nft failed without a message")


def test_translate_ip_netns_race_to_namespace_not_found() -> None:
    text = 'Cannot open network namespace "qrouter-1": No such file or directory'
    error = translate_error(text, namespace="qrouter-1")
    assert type(error) is NamespaceNotFound
    assert str(error) == "namespace qrouter-1 not found"


def test_namespace_not_found_is_not_a_not_found_table() -> None:
    # read() treats NftNotFound as "no table"; a missing namespace must never look like that.
    assert not issubclass(NamespaceNotFound, NftNotFound)


# -- choosing a runner ------------------------------------------------------------------------


def test_make_runner_kinds() -> None:
    auto = make_runner()
    try:
        assert isinstance(auto, LibNftablesRunner)
    finally:
        auto.close()
    assert isinstance(make_runner("subprocess"), SubprocessRunner)
    lib = make_runner("libnftables")
    lib.close()
    assert isinstance(make_runner("auto", library="libnosuchthing.so.9"), SubprocessRunner)
    with pytest.raises(LibraryUnavailable):
        make_runner("libnftables", library="libnosuchthing.so.9")
    with pytest.raises(ValueError, match="unknown runner kind"):
        make_runner("iptables")


# -- libnftables runner -----------------------------------------------------------------------


@kernel
def test_worker_thread_returns_home_after_every_call(netns: NamespaceFactory) -> None:
    home = netns_inode("/proc/thread-self/ns/net")
    a, b = netns.create("a"), netns.create("b")
    runner = LibNftablesRunner()
    try:
        assert worker_netns(runner) == home
        runner.run(a, "add table inet cthm\n")
        assert worker_netns(runner) == home
        runner.run(b, "list tables", json=True)
        assert worker_netns(runner) == home
        with pytest.raises(NftNotFound):
            runner.run(b, "delete table inet cthm\n")
        assert worker_netns(runner) == home
        with pytest.raises(NftOther):
            runner.run(a, "this is not nft\n")
        assert worker_netns(runner) == home
        with pytest.raises(NamespaceNotFound):
            runner.run(netns.name("absent"), "list tables")
        assert worker_netns(runner) == home
        # The work landed where it was sent, not in the worker's own namespace.
        assert "table inet cthm" in nft(a, "list", "tables")
        assert "cthm" not in nft(b, "list", "tables")
        assert netns_inode("/proc/thread-self/ns/net") == home
    finally:
        runner.close()


def test_close_stops_the_thread_and_is_final() -> None:
    runner = LibNftablesRunner()
    tid = runner.worker_native_id
    assert tid is not None
    assert Path(f"/proc/self/task/{tid}").exists()
    runner.close()
    runner.close()  # idempotent
    assert runner.worker_native_id is None
    # Python's join returns just before the OS thread is reaped: wait (bounded) for the task.
    task = Path(f"/proc/self/task/{tid}")
    for _ in range(500):
        if not task.exists():
            break
        time.sleep(0.01)
    assert not task.exists()
    assert not [t for t in threading.enumerate() if t.name == "cthm-libnftables"]
    with pytest.raises(RuntimeError, match="closed"):
        runner.run("anything", "list tables")


@kernel
def test_many_callers_in_many_threads(netns: NamespaceFactory) -> None:
    names = [netns.create(f"t{i}") for i in range(3)]
    runner = LibNftablesRunner()
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for round_ in range(10):
                namespace = names[(index + round_) % len(names)]
                table = f"t{index}"
                runner.run(namespace, f"add table inet {table}\n")
                assert f"table inet {table}" in runner.run(namespace, "list tables")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        every_table = sorted(f"table inet t{i}" for i in range(8))
        for namespace in names:
            assert sorted(nft(namespace, "list", "tables").splitlines()) == every_table
        assert len(runner.cached_contexts()) == len(names)
    finally:
        runner.close()


@kernel
def test_context_cache_is_bounded(netns: NamespaceFactory) -> None:
    names = [netns.create(f"c{i}") for i in range(3)]
    runner = LibNftablesRunner(max_contexts=2)
    try:
        for namespace in names:
            runner.run(namespace, "add table inet cthm\n")
        cached = [key[0] for key in runner.cached_contexts()]
        assert len(cached) == 2
        assert cached[-1] == names[2]  # the one just made stays; another was freed for it
        (evicted,) = set(names) - set(cached)
        runner.run(evicted, "add table inet again\n")  # an evicted one is made again on demand
        assert [key[0] for key in runner.cached_contexts()][-1] == evicted
        assert len(runner.cached_contexts()) == 2
        assert "table inet again" in nft(evicted, "list", "tables")
    finally:
        runner.close()


@contextmanager
def descriptors_held_up_to(lowest_free: int) -> Iterator[None]:
    """Holds descriptors until the lowest free one is `lowest_free` or above, as a `cthm serve`
    with a thousand client connections does (within the test's own open-file limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = lowest_free + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"open-file limit {hard} leaves no room above {lowest_free}")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[int] = []
    try:
        while (fd := os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)) < lowest_free:
            held.append(fd)
        os.close(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@kernel
def test_contexts_work_with_over_a_thousand_descriptors_open(netns: NamespaceFactory) -> None:
    """libnftables select()s on its socket when it commits: a socket at 1024 or above made
    glibc abort the process. Contexts made (and evicted, and made again) while every
    descriptor below 1100 is taken still commit, and generations are still read."""
    names = [netns.create(f"fd{i}") for i in range(4)]
    runner = LibNftablesRunner(max_contexts=2)
    try:
        with descriptors_held_up_to(1100):
            for round_ in range(2):  # the second round re-makes evicted contexts
                for namespace in names:
                    before, after, _ = runner.run_tracked(
                        namespace, f"add table inet cthmfd{round_}\n"
                    )
                    assert before is not None
                    assert after is not None
                    assert after.id == (before.id + 1) & 0xFFFFFFFF
            for namespace in names:
                assert nft(namespace, "list", "tables").split() == [
                    "table", "inet", "cthmfd0", "table", "inet", "cthmfd1"
                ]  # fmt: skip
    finally:
        runner.close()


@kernel
def test_no_low_descriptor_left_frees_a_cached_context(netns: NamespaceFactory) -> None:
    """More new contexts than the runner kept low descriptors for, while none below 1024 is
    free: each new one takes the descriptor of a cached context freed for it; every command
    lands, in its own namespace."""
    names = [netns.create(f"lo{i}") for i in range(12)]
    runner = LibNftablesRunner(max_contexts=20)
    try:
        with descriptors_held_up_to(1100):
            for namespace in names:
                runner.run(namespace, f"add table inet cthm{namespace[-3:]}\n")
            cached = runner.cached_contexts()
            assert 0 < len(cached) < len(names)  # bounded by the reserve, not by max_contexts
            for namespace in names:  # evicted ones made again, cached ones reused
                runner.run(namespace, "add table inet again\n")
        for namespace in names:
            assert nft(namespace, "list", "tables").split() == [
                "table", "inet", f"cthm{namespace[-3:]}", "table", "inet", "again"
            ]  # fmt: skip
    finally:
        runner.close()


@kernel
def test_no_low_descriptor_and_no_context_is_an_error_not_an_abort(
    netns: NamespaceFactory,
) -> None:
    """A runner started while no descriptor below 1024 is free has no reserve and no context
    to free: a new context is refused with an NftError, and made once there is room."""
    name = netns.create("nolow")
    with descriptors_held_up_to(1100):
        runner = LibNftablesRunner()
        try:
            with pytest.raises(NftOther, match="no descriptor below 1024"):
                runner.run(name, "add table inet cthmlow\n")
        except BaseException:
            runner.close()
            raise
    try:
        runner.run(name, "add table inet cthmlow\n")  # room again: made
        assert "cthmlow" in nft(name, "list", "tables")
    finally:
        runner.close()


@kernel
def test_recreated_namespace_gets_a_new_context(netns: NamespaceFactory) -> None:
    """No stale context, no zombie write: after delete + recreate, work lands in the NEW one."""
    runner = LibNftablesRunner()
    try:
        name = netns.create("re")
        runner.run(name, "add table inet old\n")
        (old_key,) = runner.cached_contexts()
        netns.delete(name)
        with pytest.raises(NamespaceNotFound, match=f"namespace {name} not found"):
            runner.run(name, "add table inet lost\n")
        assert runner.cached_contexts() == []  # freed: its socket no longer pins the old netns
        assert netns.create("re") == name
        runner.run(name, "add table inet new\n")
        (new_key,) = runner.cached_contexts()
        assert new_key[0] == name
        assert new_key != old_key
        assert nft(name, "list", "tables").split() == ["table", "inet", "new"]
    finally:
        runner.close()


@kernel
def test_replaced_namespace_is_detected_without_a_failed_call(netns: NamespaceFactory) -> None:
    runner = LibNftablesRunner()
    try:
        name = netns.create("sw")
        other = netns.create("other")
        runner.run(name, "add table inet first\n")
        runner.run(other, "add table inet o\n")
        netns.delete(name)
        netns.create("sw")
        pruned = runner.prune()
        assert [key[0] for key in pruned] == [name]
        assert [key[0] for key in runner.cached_contexts()] == [other]
        runner.run(name, "add table inet second\n")
        assert nft(name, "list", "tables").split() == ["table", "inet", "second"]
    finally:
        runner.close()


@pytest.mark.parametrize("name", ["../../proc/1/ns/net", "a/b", "-n", "x y", "", ".", "a;b"])
def test_runners_refuse_unsafe_namespace_names(lib_runner: LibNftablesRunner, name: str) -> None:
    with pytest.raises(UnsafeValue):
        lib_runner.run(name, "list tables")
    with pytest.raises(UnsafeValue):
        SubprocessRunner().run(name, "list tables")


# -- subprocess runner ------------------------------------------------------------------------


def test_subprocess_argv_is_exact() -> None:
    # The namespace is entered by the descriptor it was checked through (netns.py), never by
    # its name: `ip netns exec NAME` would follow a symlink.
    runner = SubprocessRunner()
    nsenter, nft_path = shutil.which("nsenter"), shutil.which("nft")
    enter = [nsenter, "--net=/proc/self/fd/7", "--"]
    assert runner.argv(7, "add table inet cthm\n", json=False, dry_run=False) == [
        *enter, nft_path, "-f", "-",
    ]  # fmt: skip
    assert runner.argv(7, "add table inet cthm\n", json=False, dry_run=True) == [
        *enter, nft_path, "-c", "-f", "-",
    ]  # fmt: skip
    assert runner.argv(7, "list table inet cthm", json=True, dry_run=False) == [
        *enter, nft_path, "-j", "list", "table", "inet", "cthm",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "commands", ["list table inet cthm; flush ruleset", "list tables\nflush ruleset", "", "-f x"]
)
def test_subprocess_json_takes_one_plain_command(commands: str) -> None:
    with pytest.raises(UnsafeValue):
        SubprocessRunner().argv(7, commands, json=True, dry_run=False)


def write_wrapper(directory: Path, body: str) -> None:
    script = directory / "nft"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@kernel
def test_nft_is_looked_up_on_path_at_each_call(
    netns: NamespaceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = netns.create("path")
    runner = SubprocessRunner(timeout=10)
    runner.run(namespace, "add table inet cthm\n")
    write_wrapper(tmp_path, 'echo "Error: wrapper refuses: Device or resource busy" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(NftBusy, match="wrapper refuses") as caught:
        runner.run(namespace, "delete table inet cthm\n")
    assert caught.value.__cause__ is not None
    write_wrapper(tmp_path, 'echo "Error: wrapper is broken" >&2\nexit 3\n')
    with pytest.raises(NftOther, match="wrapper is broken"):
        runner.run(namespace, "delete table inet cthm\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(NftOther, match="not found on PATH"):
        runner.run(namespace, "delete table inet cthm\n")
    monkeypatch.undo()
    runner.run(namespace, "delete table inet cthm\n")  # the real nft again: the table was kept
    assert "cthm" not in nft(namespace, "list", "tables")


@kernel
def test_subprocess_timeout_is_bounded(
    netns: NamespaceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = netns.create("slow")
    write_wrapper(tmp_path, "exec sleep 30\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(NftOther, match=r"did not finish within 0\.5 s"):
        SubprocessRunner(timeout=0.5).run(namespace, "list tables")


@kernel
def test_subprocess_checks_the_namespace_first(
    netns: NamespaceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    write_wrapper(tmp_path, f"touch {marker}\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(NamespaceNotFound, match=r"namespace .*absent not found"):
        SubprocessRunner().run(netns.name("absent"), "list tables")
    assert not marker.exists()


# -- contexts whose nft cache is emptied (kernel-worker processes) ----------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def allocated_bytes() -> int:
    """What malloc has handed out and not had back, in every arena (glibc's mallinfo2):
    unlike the resident size, not hidden by memory freed earlier and reused."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        pytest.skip("no mallinfo2 (glibc 2.33 or later) to count allocations with")
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


@kernel
def test_a_runner_that_empties_its_caches_still_commits_and_lists_exactly(
    netns: NamespaceFactory,
) -> None:
    """The empty dry run that drops a context's cache must leave nothing behind: the next
    command commits (not a dry run) and lists only its own output (both buffers rewound)."""
    ftp = [Assignment(Protocol.TCP, 21, "ftp"), Assignment(Protocol.UDP, 69, "tftp")]
    names = [netns.create(f"e{i}") for i in range(2)]
    runner = LibNftablesRunner(keep_caches=False)
    backend = NftablesBackend(runner)
    try:
        want = backend.desired(ftp)
        for namespace in names:  # alternately: each visit leaves its context's cache empty
            assert backend.sync(namespace, ftp, want) == (None, want)
            assert "table inet cthm" in nft(namespace, "list", "tables")  # committed
        for namespace in names:
            nft(namespace, "add", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 2121 }")
            have = backend.read(namespace)
            assert have is not None
            assert Assignment(Protocol.TCP, 2121, "ftp") in have.assignments
            more = [*ftp, Assignment(Protocol.TCP, 2122, "ftp")]
            assert backend.update(namespace, have, more) is not None
            assert "2122" in nft(namespace, "list", "set", "inet", "cthm", "ingress-ftp-tcp")
            assert runner.run(namespace, "list tables") == "table inet cthm\n"
    finally:
        backend.close()


@kernel
def test_contexts_whose_caches_are_emptied_hold_far_less_memory(netns: NamespaceFactory) -> None:
    """What keep_caches=False is for: nft's cache of a table (four hash tables of 8192
    buckets each) is most of what a context that committed holds (~540 of ~700 KB)."""
    ftp = [Assignment(Protocol.TCP, 21, "ftp"), Assignment(Protocol.UDP, 69, "tftp")]
    count = 30
    grown: dict[bool, int] = {}
    for keep in (False, True):
        names = [netns.create(f"m{int(keep)}{i}") for i in range(count)]
        runner = LibNftablesRunner(keep_caches=keep, max_contexts=count)
        backend = NftablesBackend(runner)
        try:
            want = backend.desired(ftp)
            backend.sync(names[0], ftp, want)  # the thread's first allocations
            start = allocated_bytes()
            for namespace in names[1:]:
                assert backend.sync(namespace, ftp, want) == (None, want)
            grown[keep] = allocated_bytes() - start
            assert len(runner.cached_contexts()) == count  # every context kept
        finally:
            backend.close()
    assert grown[True] > (count - 1) * 300_000  # ~540 KB a context more than emptied
    assert grown[False] * 2 < grown[True]


@kernel
def test_watch_makes_a_context_only_while_the_cache_has_room(netns: NamespaceFactory) -> None:
    names = [netns.create(f"w{i}") for i in range(3)]
    runner = LibNftablesRunner(max_contexts=2)
    try:
        runner.watch(names[0])  # room: made (in the background; the next call queues behind)
        assert [key[0] for key in runner.cached_contexts()] == [names[0]]
        runner.run(names[1], "list tables")
        runner.watch(names[2])  # full: none freed for a context nobody asked for yet
        assert [key[0] for key in runner.cached_contexts()] == names[:2]
        assert runner.instance(names[2]) is None
        runner.run(names[2], "list tables")  # a real call still makes one (freeing another)
        assert runner.instance(names[2]) is not None
        assert len(runner.cached_contexts()) == 2
    finally:
        runner.close()
