"""Transactions, change notification and health of the store."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cthm.domain import (
    BindingConflict,
    ListQuery,
    Status,
    Unavailable,
    new_binding,
    new_router,
)
from cthm.store import Store
from support.databases import in_process
from support.store import CATALOG, MakeBinding, MakeRouter, Snapshot


class Boom(Exception):
    pass


# --- one transaction ---------------------------------------------------------------------


def test_a_failing_unit_of_work_changes_nothing_and_notifies_nobody(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
    notifications: list[frozenset[str]],
) -> None:
    router = make_router()
    binding = make_binding(router)
    before, sent = snapshot(), len(notifications)

    def work_then_fail() -> None:
        with store.unit_of_work() as repo:
            created = repo.add_router(new_router(name="new", project_id="p"))
            repo.add_binding(new_binding(CATALOG, created, protocol="udp", port=69, helper="tftp"))
            repo.update_router(router.id, name="renamed")
            repo.update_binding(router.id, binding.id, port=2121)
            assert repo.set_binding_status(binding.id, Status.ACTIVE, "", revision_number=2)
            repo.delete_router(router.id)
            raise Boom

    with pytest.raises(Boom):
        work_then_fail()
    assert snapshot() == before
    assert len(notifications) == sent


def test_a_domain_error_rolls_back_the_earlier_work_of_its_unit(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
    notifications: list[frozenset[str]],
) -> None:
    router = make_router()
    make_binding(router, "tcp", 21, "ftp")
    before, sent = snapshot(), len(notifications)

    def add_then_conflict() -> None:
        with store.unit_of_work() as repo:
            repo.add_binding(new_binding(CATALOG, router, protocol="udp", port=69, helper="tftp"))
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))

    with pytest.raises(BindingConflict):
        add_then_conflict()
    assert snapshot() == before
    assert len(notifications) == sent


def test_base_exceptions_roll_back_too(store: Store, snapshot: Callable[[], Snapshot]) -> None:
    before = snapshot()

    def interrupted() -> None:
        with store.unit_of_work() as repo:
            repo.add_router(new_router(name="x", project_id="p"))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert snapshot() == before


# --- change notification -----------------------------------------------------------------


def test_subscribers_get_one_call_per_commit_with_the_changed_routers(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    notifications: list[frozenset[str]],
) -> None:
    r1, r2, r3 = make_router(), make_router(), make_router()
    assert notifications == [frozenset({r1.id}), frozenset({r2.id}), frozenset({r3.id})]
    binding = make_binding(r1)
    assert notifications[-1] == frozenset({r1.id})
    del notifications[:]
    with store.unit_of_work() as repo:
        repo.update_binding(r1.id, binding.id, port=2121)
        repo.add_binding(new_binding(CATALOG, r2, protocol="tcp", port=21, helper="ftp"))
        repo.update_router(r2.id, name="renamed")
        repo.delete_router(r3.id)
    assert notifications == [frozenset({r1.id, r2.id, r3.id})]


def test_reads_and_status_writes_notify_nobody(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    notifications: list[frozenset[str]],
) -> None:
    router = make_router()
    binding = make_binding(router)
    sent = len(notifications)
    with store.unit_of_work(write=False) as repo:
        repo.get_router(router.id)
        repo.list_bindings(ListQuery(), router_id=router.id)
    with store.unit_of_work() as repo:
        repo.set_router_status(router.id, Status.ACTIVE, "", revision_number=2)
        repo.set_binding_status(binding.id, Status.ACTIVE, "", revision_number=1)
        repo.tombstones()
        repo.clear_tombstone(router.id)
    assert len(notifications) == sent


def test_subscribers_run_after_the_commit(store: Store) -> None:
    seen: list[str] = []

    def look(router_ids: frozenset[str]) -> None:
        # A fresh unit of work (another connection) already sees the change.
        with store.unit_of_work(write=False) as repo:
            seen.extend(repo.get_router(router_id).name for router_id in router_ids)

    store.subscribe(in_process(look))
    with store.unit_of_work() as repo:
        repo.add_router(new_router(name="visible", project_id="p"))
    assert seen == ["visible"]


def test_a_failing_subscriber_does_not_break_the_commit_or_the_others(store: Store) -> None:
    calls: list[str] = []

    def broken(router_ids: frozenset[str]) -> None:
        calls.append("broken")
        raise RuntimeError("subscriber bug")

    def after(router_ids: frozenset[str]) -> None:
        calls.append("after")

    store.subscribe(in_process(broken))
    store.subscribe(in_process(after))
    with store.unit_of_work() as repo:
        router = repo.add_router(new_router(name="kept", project_id="p"))
    assert calls == ["broken", "after"]
    with store.unit_of_work(write=False) as repo:
        assert repo.get_router(router.id).name == "kept"


# --- health ------------------------------------------------------------------------------


def test_healthy_store(store: Store) -> None:
    store.check_health()


def assert_unavailable(path: Path) -> None:
    """A store on the file at `path` answers Unavailable to a health check and to a read."""
    store = Store(f"sqlite:///{path}")
    try:
        with pytest.raises(Unavailable):
            store.check_health()
        with pytest.raises(Unavailable), store.unit_of_work() as repo:
            repo.list_router_ids()
    finally:
        store.close()


def test_database_in_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    assert_unavailable(tmp_path / "absent" / "cthm.db")


def test_database_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "cthm.db"
    path.write_bytes(os.urandom(8192))
    assert_unavailable(path)


def test_removed_data_directory_is_unavailable(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = Store(f"sqlite:///{data_dir / 'cthm.db'}")
    try:
        store.migrate()
        with store.unit_of_work() as repo:
            repo.add_router(new_router(name="r", project_id="p"))
        store.check_health()
        # Open connections keep the unlinked file alive: health must still see it is gone,
        # or the store would keep acknowledging writes that no restart can find.
        shutil.rmtree(data_dir)
        with pytest.raises(Unavailable):
            store.check_health()
    finally:
        store.close()
    with pytest.raises(Unavailable):
        store.check_health()


def test_unavailable_message_does_not_leak_sql(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'absent' / 'cthm.db'}")
    try:
        with pytest.raises(Unavailable) as info:
            store.check_health()
    finally:
        store.close()
    message = str(info.value)
    assert "SELECT" not in message
    assert str(tmp_path) not in message
    assert message.isprintable()
