"""Full syncs in kernel-worker processes (issue 14, netfilter/sync_processes.py), against the
real kernel: a worker applies and reads back what the agent's own process would, its errors
come back as the same classes, a worker that dies or hangs fails that one sync (killed, the
kernel as it was) and is started again, a burst starts the workers and a trickle never does,
close() ends them, and they never see cthm's settings (a database URL may hold a password)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import (
    LibNftablesRunner,
    NamespaceNotFound,
    NftablesBackend,
    NftOther,
    SyncProcesses,
    UnsafeValue,
)
from cthm.netfilter.netns import NETNS_DIR, UnsafeNamespace
from cthm.testing import NamespaceFactory

from .conftest import nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000f"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
READY = 30.0  # seconds a worker may take to start on a loaded machine


@pytest.fixture
def processes() -> Iterator[SyncProcesses]:
    pool = SyncProcesses(1, owner=OWNER, start_after=0)
    yield pool
    pool.close()


@pytest.fixture
def backend(lib: LibNftablesRunner, processes: SyncProcesses) -> NftablesBackend:
    return NftablesBackend(lib, owner=OWNER, processes=processes)


def alive(pid: int) -> bool:
    """Whether the process exists (a reaped worker of ours does not)."""
    return Path(f"/proc/{pid}").exists()


def wait_until(condition: Callable[[], bool], timeout: float = READY) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def ready_again(pool: SyncProcesses) -> bool:
    """Waits (bounded) until the pool's workers run and answer; a restart waits a second."""
    deadline = time.monotonic() + READY
    while time.monotonic() < deadline:
        if pool.wait_ready(READY):
            return True
        time.sleep(0.1)
    return False


def test_a_worker_applies_and_reads_back_what_this_process_would(
    backend: NftablesBackend, processes: SyncProcesses, netns: NamespaceFactory
) -> None:
    namespace = netns.create("sp")
    assert processes.wait_ready(READY)
    [pid] = processes.pids
    assert pid != os.getpid()
    want = backend.desired(FTP)
    assert backend.sync(namespace, FTP, want) == (None, want)  # applied and read back there
    assert processes.counts["remote"] == 1
    assert "2121" in nft(namespace, "list", "set", "inet", "cthm", "ingress-ftp-tcp")
    # Read by this process (its own runner): the table the worker wrote, marked as ours.
    reader = NftablesBackend(LibNftablesRunner(), owner=OWNER)
    try:
        assert reader.read(namespace) == want
    finally:
        reader.close()
    assert backend.sync(namespace, FTP, want) == (want, None)  # unchanged: nothing applied
    # Drift by hand is seen by the worker and repaired.
    nft(namespace, "delete", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 2121 }")
    before, after = backend.sync(namespace, FTP, want)
    assert before is not None
    assert Assignment(TCP, 2121, "ftp") not in before.assignments
    assert after == want
    assert processes.counts["remote"] == 3
    # A partial sync in this process, on the table the worker verified.
    more = [*FTP, Assignment(TCP, 2122, "ftp")]
    assert backend.update(namespace, after, more) == backend.desired(more)
    assert "2122" in nft(namespace, "list", "set", "inet", "cthm", "ingress-ftp-tcp")


def test_a_no_op_sync_is_answered_here_once_the_workers_listing_is_adopted(
    lib: LibNftablesRunner,
    backend: NftablesBackend,
    processes: SyncProcesses,
    netns: NamespaceFactory,
) -> None:
    namespace = netns.create("spa")
    assert processes.wait_ready(READY)
    want = backend.desired(FTP)
    assert backend.sync(namespace, FTP, want) == (None, want)  # by the worker
    # This process had no context of the namespace: one is made in the background.
    assert wait_until(lambda: lib.instance(namespace) is not None)
    assert backend.sync(namespace, FTP, want) == (want, None)  # the worker's, adopted here
    assert processes.counts == {"local": 0, "remote": 2}
    for _ in range(3):  # answered by the generation alone: no call to the worker
        assert backend.sync(namespace, FTP, want) == (want, None)
    assert processes.counts == {"local": 0, "remote": 2}
    assert backend.read(namespace) == want
    # Any commit in the namespace: the adopted listing is not answered from any more.
    nft(namespace, "delete", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 21 }")
    before, after = backend.sync(namespace, FTP, want)
    assert before is not None
    assert Assignment(TCP, 21, "ftp") not in before.assignments
    assert after == want
    assert processes.counts["remote"] == 3


def test_a_workers_errors_are_the_same_errors(
    lib: LibNftablesRunner, netns: NamespaceFactory, tmp_path: Path
) -> None:
    real = netns.create("spe")
    (tmp_path / "link").symlink_to(NETNS_DIR / real)
    (tmp_path / real).symlink_to(NETNS_DIR / real)
    pool = SyncProcesses(1, owner=OWNER, start_after=0, netns_dir=tmp_path)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    try:
        assert pool.wait_ready(READY)
        want = backend.desired(FTP)
        gone = netns.name("spe-gone")
        with pytest.raises(NamespaceNotFound) as missing:
            backend.sync(gone, FTP, want)
        assert missing.value.namespace == gone
        assert str(missing.value) == missing.value.message == f"namespace {gone} not found"
        # The worker opens names in its own netns_dir: a symlink there is refused.
        with pytest.raises(UnsafeNamespace) as refused:
            backend.sync("link", FTP, want)
        assert refused.value.namespace == "link"
        bad = [Assignment(TCP, 70000, "ftp")]
        with pytest.raises(UnsafeValue):
            backend.sync(real, bad, want)
        assert pool.counts == {"local": 0, "remote": 3}
        assert "cthm" not in nft(real, "list", "tables")  # nothing was written anywhere
    finally:
        backend.close()


def test_a_worker_that_dies_fails_one_sync_and_is_started_again(
    backend: NftablesBackend, processes: SyncProcesses, netns: NamespaceFactory
) -> None:
    namespace = netns.create("spd")
    want = backend.desired(FTP)
    assert processes.wait_ready(READY)
    backend.sync(namespace, FTP, want)
    [pid] = processes.pids
    os.kill(pid, signal.SIGKILL)  # our own worker, by its pid
    fewer = FTP[:1]
    with pytest.raises(NftOther, match="exited"):
        backend.sync(namespace, fewer, backend.desired(fewer))
    assert not alive(pid)
    assert backend.read(namespace) == want  # the kernel as it was
    # The next sync is done (here, while the new worker starts), then by the new worker.
    assert backend.sync(namespace, fewer, backend.desired(fewer))[1] == backend.desired(fewer)
    assert ready_again(processes)
    [new] = processes.pids
    assert new != pid
    remote = processes.counts["remote"]
    assert backend.sync(namespace, FTP, want)[1] == want
    assert processes.counts["remote"] == remote + 1


def test_a_worker_that_hangs_is_killed_after_the_timeout(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    namespace = netns.create("sph")
    pool = SyncProcesses(1, owner=OWNER, start_after=0, timeout=0.5)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    try:
        assert pool.wait_ready(READY)
        [pid] = pool.pids
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(NftOther, match=r"did not answer in 0\.5 s"):
            backend.sync(namespace, FTP, backend.desired(FTP))
        assert not alive(pid)  # killed and reaped, not left stopped
        assert pool.pids == []
    finally:
        backend.close()


def test_the_agents_word_that_a_burst_is_coming_starts_the_workers(
    lib: LibNftablesRunner,
) -> None:
    pool = SyncProcesses(2, owner=OWNER, start_after=4)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    try:
        backend.expect_full_syncs(3)  # fewer than start_after: not worth a process
        assert pool.pids == []
        backend.expect_full_syncs(100)  # the agent's resync of 100 routers
        assert len(pool.pids) == 2
        assert pool.wait_ready(READY)
    finally:
        backend.close()


def test_a_trickle_of_syncs_starts_no_worker_and_a_burst_does(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    names = [netns.create(f"spb{i}") for i in range(8)]
    pool = SyncProcesses(2, owner=OWNER, start_after=4)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    try:
        want = backend.desired(FTP)
        for name in names:  # one after the other: never two at once
            assert backend.sync(name, FTP, want)[1] == want
        assert pool.pids == []
        fewer = FTP[:2]
        errors: list[BaseException] = []

        def sync(name: str, start: threading.Barrier) -> None:
            start.wait(10)
            try:
                backend.sync(name, fewer, backend.desired(fewer))
            except BaseException as exc:  # reported below
                errors.append(exc)

        for _ in range(5):  # bounded: a burst almost always overlaps at once
            start = threading.Barrier(len(names))
            threads = [threading.Thread(target=sync, args=(n, start)) for n in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            if pool.pids:
                break
        assert errors == []
        started = pool.pids
        assert started  # by the burst
        assert all(backend.read(name) == backend.desired(fewer) for name in names)
    finally:
        backend.close()
    assert pool.pids == []
    assert not any(alive(pid) for pid in started)


def test_close_ends_the_workers_and_they_never_see_cthms_settings(
    lib: LibNftablesRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTHM_DATABASE_URL", "postgresql+psycopg://cthm:s3cr3t-pw@db/cthm")
    pool = SyncProcesses(2, owner=OWNER)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    assert pool.wait_ready(READY)
    pids = pool.pids
    assert len(pids) == 2
    for pid in pids:
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"s3cr3t" not in environment
        assert b"CTHM_" not in environment
    backend.close()
    assert pool.pids == []
    assert not any(alive(pid) for pid in pids)
    backend.close()  # idempotent


def taken(pool: SyncProcesses, count: int) -> Callable[[], bool]:
    """Whether `count` syncs went to the workers."""
    return lambda: pool.counts["remote"] == count


def test_a_sync_waits_behind_a_busy_worker_and_runs_here_when_one_waits_already(
    backend: NftablesBackend, processes: SyncProcesses, netns: NamespaceFactory
) -> None:
    """A busy worker takes one more sync (it waits its turn), not two: the third runs in this
    process at once. The worker is stopped meanwhile (SIGSTOP), so "busy" lasts."""
    first, second, third = (netns.create(f"spq{i}") for i in range(3))
    want = backend.desired(FTP)
    assert processes.wait_ready(READY)
    [pid] = processes.pids
    results: dict[str, object] = {}

    def sync(name: str) -> None:
        try:
            results[name] = backend.sync(name, FTP, want)
        except BaseException as exc:  # reported below
            results[name] = exc

    os.kill(pid, signal.SIGSTOP)  # our own worker, by its pid
    threads = []
    try:
        for name in (first, second):
            threads.append(threading.Thread(target=sync, args=(name,)))
            threads[-1].start()
            assert wait_until(taken(processes, len(threads)))
        assert backend.sync(third, FTP, want) == (None, want)  # here, the worker stopped
        assert processes.counts == {"local": 1, "remote": 2}
        assert results == {}  # the two are still waiting for the worker
    finally:
        os.kill(pid, signal.SIGCONT)
        for thread in threads:
            thread.join(READY)
    assert results == {first: (None, want), second: (None, want)}
    assert all(backend.read(name) == want for name in (first, second, third))
    assert processes.pids == [pid]


def test_a_sync_waiting_behind_a_worker_that_hangs_runs_here_once_it_is_killed(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    hung, waiting = netns.create("sph1"), netns.create("sph2")
    pool = SyncProcesses(1, owner=OWNER, start_after=0, timeout=1.0)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    errors: list[BaseException] = []

    def sync_hung() -> None:
        try:
            backend.sync(hung, FTP, backend.desired(FTP))
        except BaseException as exc:  # checked below
            errors.append(exc)

    try:
        assert pool.wait_ready(READY)
        [pid] = pool.pids
        os.kill(pid, signal.SIGSTOP)
        thread = threading.Thread(target=sync_hung)
        thread.start()
        assert wait_until(taken(pool, 1))
        want = backend.desired(FTP)
        assert backend.sync(waiting, FTP, want) == (None, want)  # after the kill, here
        thread.join(READY)
        assert [type(exc) for exc in errors] == [NftOther]
        assert "did not answer" in str(errors[0])
        assert not alive(pid)
        assert pool.counts == {"local": 1, "remote": 1}
        assert backend.read(waiting) == want
        assert backend.read(hung) is None  # the hung worker never applied it
    finally:
        backend.close()


def test_calls_waiting_behind_one_are_sent_at_once_and_each_gets_its_own_answer(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    """Pipelined calls (sent before the worker answered the one before): with one worker and
    many threads, each sync's answer is its own namespace's, whatever order the threads read
    the worker's answers in."""
    names = [netns.create(f"spp{i}") for i in range(6)]
    pool = SyncProcesses(1, owner=OWNER, start_after=0)
    backend = NftablesBackend(lib, owner=OWNER, processes=pool)
    # A different table per namespace (its own port), so a mixed-up answer shows.
    tables = {name: [*FTP, Assignment(TCP, 3000 + i, "ftp")] for i, name in enumerate(names)}
    results: dict[str, object] = {}

    def sync(name: str, start: threading.Barrier) -> None:
        start.wait(10)
        try:
            results[name] = backend.sync(name, tables[name], backend.desired(tables[name]))
        except BaseException as exc:  # reported below
            results[name] = exc

    try:
        assert pool.wait_ready(READY)
        for _ in range(3):
            start = threading.Barrier(len(names))
            threads = [threading.Thread(target=sync, args=(n, start)) for n in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(READY)
            for name in names:
                want = backend.desired(tables[name])
                assert results[name] in ((None, want), (want, None))
                assert backend.read(name) == want
            for name in names:  # empty again: the next round applies anew
                backend.delete(name)
        assert pool.counts["remote"] > 0
    finally:
        backend.close()


def test_a_worker_killed_with_a_call_waiting_fails_the_one_it_ran_and_the_other_runs_here(
    backend: NftablesBackend, processes: SyncProcesses, netns: NamespaceFactory
) -> None:
    running, waiting = netns.create("spk1"), netns.create("spk2")
    want = backend.desired(FTP)
    assert processes.wait_ready(READY)
    [pid] = processes.pids
    results: dict[str, object] = {}

    def sync(name: str) -> None:
        try:
            results[name] = backend.sync(name, FTP, want)
        except BaseException as exc:  # checked below
            results[name] = exc

    os.kill(pid, signal.SIGSTOP)  # our own worker, by its pid
    threads = []
    try:
        for name in (running, waiting):  # both sent to the stopped worker
            threads.append(threading.Thread(target=sync, args=(name,)))
            threads[-1].start()
            assert wait_until(taken(processes, len(threads)))
    finally:
        os.kill(pid, signal.SIGKILL)
        for thread in threads:
            thread.join(READY)
    assert not alive(pid)
    failed = [name for name, result in results.items() if isinstance(result, NftOther)]
    assert len(failed) == 1  # the call the worker had taken; the one behind ran here
    [done] = [name for name in (running, waiting) if name not in failed]
    assert results[done] == (None, want)
    assert backend.read(done) == want
    assert backend.read(failed[0]) is None  # the killed worker never applied it
    assert processes.counts == {"local": 1, "remote": 1}
