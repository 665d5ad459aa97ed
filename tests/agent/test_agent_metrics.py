"""The agent's Prometheus metrics (cthm.metrics) after real reconciles by a started agent, over a
real store and the honest in-memory fake kernel: a change is a sync and a programming latency,
drift is a repair (not programming), a refused transaction a failure that keeps the router
waiting (what /readyz reads) until it is applied."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_reconcile_fake import NAMESPACE, Setup, make_setup

from cthm import metrics
from cthm.domain import ListQuery, Status

SETTLE_TIMEOUT = 10.0


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def syncs() -> float:
    return sum(
        sample("cthm_agent_sync_duration_seconds_count", kind=k) for k in ("full", "partial")
    )


def programmed() -> float:
    return sample("cthm_agent_programming_duration_seconds_count")


def eventually(done: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return done()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Setup]:
    for setup in make_setup(tmp_path, None):
        setup.store.subscribe(setup.agent.enqueue)  # as `cthm serve` does
        setup.agent.start()
        try:
            yield setup
        finally:
            setup.agent.stop()


def statuses(s: Setup) -> set[Status]:
    with s.store.unit_of_work(write=False) as repo:
        return {b.status for b in repo.list_bindings(ListQuery(), s.router.id)}


def test_a_change_is_a_sync_and_a_programming_latency(started: Setup) -> None:
    s = started
    assert s.agent.wait_settled()
    assert eventually(lambda: s.agent.snapshot().oldest_queued_seconds is None)
    syncs_before, programmed_before = syncs(), programmed()
    last_before = sample("cthm_agent_sync_last_timestamp_seconds")

    s.bind("tcp", 21, "ftp")
    assert eventually(lambda: statuses(s) == {Status.ACTIVE})
    assert eventually(lambda: programmed() == programmed_before + 1)
    assert syncs() >= syncs_before + 1
    assert sample("cthm_agent_sync_last_timestamp_seconds") >= last_before
    assert sample("cthm_agent_sync_last_queued_timestamp_seconds") >= time.time() - 30
    assert s.agent.snapshot().oldest_queued_seconds is None  # nothing waits once verified


def test_drift_is_a_repair_and_not_programming(started: Setup) -> None:
    s = started
    s.bind("tcp", 21, "ftp")
    assert eventually(lambda: statuses(s) == {Status.ACTIVE})
    assert s.agent.wait_settled()
    repairs, programmed_before = sample("cthm_agent_drift_repairs_total"), programmed()

    s.kernel.run(NAMESPACE, "flush table inet cthm")  # behind cthm's back
    s.agent.resync()
    assert eventually(lambda: sample("cthm_agent_drift_repairs_total") == repairs + 1)
    assert s.agent.wait_settled()
    assert programmed() == programmed_before


def test_a_refused_sync_is_a_failure_and_the_router_keeps_waiting(started: Setup) -> None:
    s = started
    assert s.agent.wait_settled()
    failures = sample("cthm_agent_sync_failures_total", backend="nftables")
    s.kernel.refuse = True
    s.bind("tcp", 21, "ftp")
    assert eventually(
        lambda: sample("cthm_agent_sync_failures_total", backend="nftables") > failures
    )
    waited = s.agent.snapshot().oldest_queued_seconds
    assert waited is not None  # retried with backoff: still waiting, for /readyz to see

    s.kernel.refuse = False
    assert eventually(lambda: statuses(s) == {Status.ACTIVE})
    assert eventually(lambda: s.agent.snapshot().oldest_queued_seconds is None)
