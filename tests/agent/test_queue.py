"""The work queue: collapse, per-key serialization, backoff, shutdown."""

from __future__ import annotations

import threading

import pytest

from cthm.agent import ShutDown, WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_duplicates_collapse_into_one_item() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add("r1")
    queue.add("r2")
    assert len(queue) == 2
    assert queue.get(timeout=0) == "r1"
    assert queue.get(timeout=0) == "r2"
    assert queue.get(timeout=0) is None


def test_key_in_flight_is_not_handed_out_twice_and_comes_back_after_done() -> None:
    queue = WorkQueue()
    queue.add("r1")
    assert queue.get(timeout=0) == "r1"
    queue.add("r1")  # changed while a worker holds it
    assert queue.get(timeout=0) is None, "a second worker must not get r1 while it is in flight"
    queue.done("r1")
    assert queue.get(timeout=0) == "r1"
    queue.done("r1")
    assert queue.idle()


def test_backoff_grows_exponentially_and_is_capped() -> None:
    clock = FakeClock()
    queue = WorkQueue(base_delay=0.1, max_delay=1.0, clock=clock)
    delays = [queue.retry("r1") for _ in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    queue.forget("r1")
    assert queue.retry("r1") == 0.1


def test_retried_key_is_not_ready_before_its_delay() -> None:
    clock = FakeClock()
    queue = WorkQueue(base_delay=0.5, clock=clock)
    queue.retry("r1")
    assert queue.get(timeout=0) is None
    clock.now += 0.49
    assert queue.get(timeout=0) is None
    clock.now += 0.02
    assert queue.get(timeout=0) == "r1"


def test_an_event_overrides_a_pending_backoff() -> None:
    clock = FakeClock()
    queue = WorkQueue(base_delay=30, clock=clock)
    queue.retry("r1")
    queue.add("r1")  # something changed: do not wait 30 s
    assert queue.get(timeout=0) == "r1"


def test_shutdown_wakes_blocked_workers() -> None:
    queue = WorkQueue()
    stopped = threading.Event()

    def worker() -> None:
        with pytest.raises(ShutDown):
            queue.get()
        stopped.set()

    thread = threading.Thread(target=worker)
    thread.start()
    queue.shutdown()
    thread.join(5)
    assert stopped.is_set()
    assert not thread.is_alive()


def test_many_threads_each_key_processed_serially() -> None:
    queue = WorkQueue()
    active: set[str] = set()
    overlaps: list[str] = []
    processed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                key = queue.get(timeout=0.5)
            except ShutDown:
                return
            if key is None:
                return
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
            for _ in range(200):
                pass
            with lock:
                active.discard(key)
                processed.append(key)
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for round_ in range(50):
        for key in ("a", "b", "c"):
            queue.add(key)
        if round_ % 10 == 0:
            queue.add("d")
    for thread in threads:
        thread.join(10)
    assert not overlaps
    assert {"a", "b", "c", "d"} <= set(processed)


def test_an_added_key_wakes_a_worker_even_while_someone_waits_for_the_queue() -> None:
    """wait_until() shares the queue's condition with the workers: the wake-up add() sends must
    reach the worker, not only the waiter (which would leave the key unclaimed)."""
    queue = WorkQueue()
    stop_waiting = threading.Event()
    waiter = threading.Thread(target=queue.wait_until, args=(stop_waiting.is_set, 5.0))
    waiter.start()  # queued on the condition first
    got: list[str | None] = []
    worker_waiting = threading.Event()

    def worker() -> None:
        worker_waiting.set()
        try:
            got.append(queue.get())  # no timeout: only a notification wakes it
        except ShutDown:
            got.append("never woken")

    worker_thread = threading.Thread(target=worker)
    worker_thread.start()
    assert worker_waiting.wait(2.0)
    for _ in range(100):  # bounded: until the worker is blocked in get()
        if len(queue._cond._waiters) >= 2:  # type: ignore[attr-defined]
            break
        threading.Event().wait(0.005)
    queue.add("r1")
    worker_thread.join(2.0)
    stop_waiting.set()
    queue.shutdown()  # releases a worker that was never woken
    worker_thread.join(5.0)
    waiter.join(5.0)
    assert got == ["r1"]


def test_keys_added_back_to_back_wake_one_idle_worker_each() -> None:
    # Each key wakes one idle worker (not all of them): a second key added while the first
    # worker is still busy with the first must reach the other worker.
    q = WorkQueue()
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            key = q.get()  # no timeout: only a wake-up brings it back
        except ShutDown:
            return
        with lock:
            got.append(str(key))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert q.wait_until(lambda: _waiters(q) == 2, 5.0)
        q.add("a")
        q.add("b")
        for thread in threads:
            thread.join(5.0)
        assert sorted(got) == ["a", "b"]
    finally:
        q.shutdown()  # releases a worker left waiting if a wake-up was lost


def test_a_delayed_key_wakes_an_idle_worker_when_due() -> None:
    q = WorkQueue()
    got: list[str | None] = []

    def worker() -> None:
        try:
            got.append(q.get())  # no timeout until told of the delayed key
        except ShutDown:
            return

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        assert q.wait_until(lambda: _waiters(q) == 1, 5.0)
        q.add_after("a", 0.01)
        thread.join(5.0)
        assert got == ["a"]
    finally:
        q.shutdown()


def _waiters(q: WorkQueue) -> int:
    """Workers blocked in get(): the count CPython's Condition keeps of its waiters."""
    return len(q._cond._waiters)  # type: ignore[attr-defined]
