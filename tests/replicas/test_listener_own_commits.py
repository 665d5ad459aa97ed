"""A replica's own commits on PostgreSQL: its subscribers are told once, at the commit (its own
NOTIFY, coming back through its listener, is not read again), and nothing another replica
commits in between is missed."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator

import pytest

from cthm.domain import Router, new_router
from cthm.store import Store
from cthm.testing.postgres import PostgresCluster

WAIT = 15.0
QUIET = 0.5  # seconds without a second telling of one commit


@pytest.fixture
def database(cluster: PostgresCluster) -> Iterator[str]:
    name = f"own_commits_{os.getpid()}_{time.monotonic_ns()}"
    url = cluster.create_database(name)
    yield url
    cluster.drop_database(name)


def add_router(store: Store, name: str) -> Router:
    with store.unit_of_work() as repo:
        return repo.add_router(new_router(name=name, project_id="p", namespace=f"qrouter-{name}"))


def heard_within(heard: queue.Queue[frozenset[str]], seconds: float) -> list[frozenset[str]]:
    found: list[frozenset[str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            found.append(heard.get(timeout=left))
        except queue.Empty:
            break
    return found


def heard_until(heard: queue.Queue[frozenset[str]], wanted: set[str]) -> set[str]:
    found: set[str] = set()
    deadline = time.monotonic() + WAIT
    while not wanted <= found and time.monotonic() < deadline:
        try:
            found |= heard.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
    return found


def test_own_commits_are_told_once_and_other_replicas_commits_still_arrive(
    database: str,
) -> None:
    heard: queue.Queue[frozenset[str]] = queue.Queue()
    replica, other = Store(database), Store(database)
    try:
        replica.subscribe(heard.put)
        assert heard.get(timeout=WAIT) == frozenset()  # listening
        own = add_router(replica, "own")
        assert heard.get(timeout=WAIT) == {own.id}
        # Its NOTIFY came back, and was not told again.
        told_again = heard_within(heard, QUIET)
        assert not told_again, f"told again: {told_again} (own router {own.id})"
        # Interleaved with another replica's commits: every router is told.
        routers = [add_router(other, "a"), add_router(replica, "b"), add_router(other, "c")]
        wanted = {router.id for router in routers}
        assert wanted <= heard_until(heard, wanted)
    finally:
        replica.close()
        other.close()
