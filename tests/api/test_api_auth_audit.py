"""Failed authentications as audit events: one per client (and token id) per window, counted;
with a real SQLite store and a fake clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cthm.api.auth_audit import FailedAuthentications
from cthm.domain import ListQuery
from cthm.store import AuditContext, Store

from .support import make_settings, make_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = make_store(make_settings(tmp_path))
    yield opened
    opened.close()


def rows(store: Store) -> list[dict[str, Any]]:
    with store.unit_of_work(write=False) as repo:
        return [e for e in repo.audit.list(ListQuery()) if e["action"] == "authenticate"]


def fail(
    failures: FailedAuthentications, client: str, token_id: str | None = None, n: int = 1
) -> None:
    for number in range(n):
        context = AuditContext(f"req-{client}-{number}", token_id, None)
        failures.write(failures.failed(client, context, "GET /v2.0/routers"))


def test_counts_are_rewritten_at_most_every_flush_interval(store: Store) -> None:
    clock = Clock()
    failures = FailedAuthentications(
        store, window=60.0, flush_interval=2.0, clock=clock, wall_clock=clock.wall
    )
    fail(failures, "192.0.2.1", n=50)
    (event,) = rows(store)
    assert event["after"]["failures"] == 1  # written at once, recounted later
    assert event["request_id"] == "req-192.0.2.1-0"
    clock.now += 2.0
    fail(failures, "192.0.2.1")
    assert rows(store)[0]["after"]["failures"] == 51
    fail(failures, "192.0.2.1", n=3)
    assert failures.pending()
    failures.flush()
    assert not failures.pending()
    (event,) = rows(store)
    assert event["after"]["failures"] == 54
    assert event["after"]["last_failure"] == "2030-01-01T00:16:42Z"
    assert event["detail"] == "GET /v2.0/routers (54 failures from 192.0.2.1 in this window)"


def test_a_new_window_is_a_new_event_and_the_old_one_keeps_its_final_count(
    store: Store,
) -> None:
    clock = Clock()
    failures = FailedAuthentications(
        store, window=60.0, flush_interval=30.0, clock=clock, wall_clock=clock.wall
    )
    fail(failures, "192.0.2.1", n=7)
    clock.now += 60.0
    fail(failures, "192.0.2.1", n=2)
    failures.flush()
    assert sorted(e["after"]["failures"] for e in rows(store)) == [2, 7]


def test_clients_and_token_ids_are_apart_and_memory_is_bounded(store: Store) -> None:
    clock = Clock()
    failures = FailedAuthentications(
        store, max_open=2, flush_interval=30.0, clock=clock, wall_clock=clock.wall
    )
    fail(failures, "192.0.2.1", n=3)
    fail(failures, "192.0.2.1", token_id="revoked-token-id", n=2)
    # A third key pushes out the oldest, whose count is written as it goes.
    fail(failures, "2001:db8::/64")
    found = {(e["after"]["client"], e["token_id"]): e["after"]["failures"] for e in rows(store)}
    assert found == {
        ("192.0.2.1", None): 3,
        ("192.0.2.1", "revoked-token-id"): 1,
        ("2001:db8::/64", None): 1,
    }


def test_a_database_that_cannot_write_never_raises(tmp_path: Path) -> None:
    broken = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'cthm.db'}")
    try:
        failures = FailedAuthentications(broken)
        fail(failures, "192.0.2.9", n=3)  # logged (once), not raised: the 401 still goes out
        assert failures.pending()  # retried by the next flush
    finally:
        broken.close()
