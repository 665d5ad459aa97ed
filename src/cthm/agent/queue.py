"""A work queue keyed by router id, after client-go's workqueue.

- Adding a key already waiting does nothing (duplicates collapse).
- A key being processed is never handed to a second worker; added meanwhile, it is queued again
  when the first worker calls done() (per-router serialization, parallel across routers).
- Failed keys come back after an exponential backoff, capped; forget() resets the backoff.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable


class ShutDown(Exception):
    """The queue is shut down: the worker should stop."""


class WorkQueue:
    def __init__(
        self,
        *,
        base_delay: float = 0.05,
        max_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        lock = threading.Lock()
        # Workers wait on _cond, woken one per key made ready (waking them all for each key
        # woke every idle worker, and each took the GIL, in a change's way to the kernel);
        # wait_until() callers on _watched, all woken at every change. One lock for both.
        self._cond = threading.Condition(lock)
        self._watched = threading.Condition(lock)
        self._ready: deque[str] = deque()
        self._waiting: set[str] = set()  # in _ready
        self._processing: set[str] = set()
        self._dirty: set[str] = set()  # added while processing
        self._delayed: list[tuple[float, int, str]] = []  # (due, seq, key) heap
        self._delayed_due: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._seq = 0
        self._shutdown = False
        self._changes = 0  # bumped at every notification, for wait_until()

    def add(self, key: str) -> None:
        with self._cond:
            if self._shutdown:
                return
            self._delayed_due.pop(key, None)  # something changed: try now, not after backoff
            if key in self._processing:
                self._dirty.add(key)
                return
            if key in self._waiting:
                return
            self._waiting.add(key)
            self._ready.append(key)
            self._notify(1)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutdown:
                return
            due = self._clock() + delay
            previous = self._delayed_due.get(key)
            if previous is not None and previous <= due:
                return  # an earlier retry is already planned
            self._delayed_due[key] = due
            self._seq += 1
            heapq.heappush(self._delayed, (due, self._seq, key))
            self._notify(1)  # a worker waits until the earliest due key

    def retry(self, key: str) -> float:
        """Requeues a failed key after its next backoff delay; returns that delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay: float = min(self._max_delay, self._base_delay * (2.0**failures))
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float | None = None) -> str | None:
        """The next key to process (now owned by the caller until done()), or None on timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    raise ShutDown
                self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._waiting.discard(key)
                    self._processing.add(key)
                    return key
                wait = self._next_due_in()
                if deadline is not None:
                    remaining = deadline - self._clock()
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            ready = 0
            if key in self._dirty:
                self._dirty.discard(key)
                if key not in self._waiting:
                    self._waiting.add(key)
                    self._ready.append(key)
                    ready = 1
            self._notify(ready)

    def idle(self) -> bool:
        """Nothing ready, delayed or in flight."""
        with self._cond:
            return not (self._ready or self._processing or self._delayed_due)

    def busy(self) -> bool:
        """Something ready or in flight (delayed retries do not count)."""
        with self._cond:
            self._promote_due()
            return bool(self._ready or self._processing)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Polls `predicate` (outside the queue's lock) after every queue change, until it holds
        or `timeout` passes; True if it held."""
        deadline = self._clock() + timeout
        while True:
            with self._cond:
                seen = self._changes
            if predicate():
                return True
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            with self._cond:
                # A change between the check and here would otherwise go unheard for the wait.
                if self._changes == seen:
                    self._watched.wait(min(remaining, 0.05))

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()
            self._notify(0)

    def _notify(self, workers: int) -> None:
        """A change (the lock held): `workers` idle workers woken, every wait_until()."""
        self._changes += 1
        if workers:
            self._cond.notify(workers)
        self._watched.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._delayed_due)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            due, _, key = heapq.heappop(self._delayed)
            if self._delayed_due.get(key) != due:
                continue  # superseded by an earlier plan
            del self._delayed_due[key]
            if key in self._processing:
                self._dirty.add(key)
            elif key not in self._waiting:
                self._waiting.add(key)
                self._ready.append(key)

    def _next_due_in(self) -> float | None:
        if not self._delayed:
            return None
        return max(0.0, self._delayed[0][0] - self._clock())
