"""Repository behaviour through Store.unit_of_work on a real SQLite file."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cthm.domain import (
    BindingConflict,
    BindingNotFound,
    Conflict,
    HelperBinding,
    ListQuery,
    NamespaceInUse,
    Protocol,
    Router,
    RouterExists,
    RouterNotFound,
    Status,
    new_router,
)
from cthm.store import Store
from support.databases import PlainSql
from support.store import MakeBinding, MakeRouter, Snapshot

ALL = ListQuery()
MISSING = str(uuid.UUID(int=999))


def reload_router(store: Store, router_id: str) -> Router:
    with store.unit_of_work(write=False) as repo:
        return repo.get_router(router_id)


def reload_binding(store: Store, router_id: str, binding_id: str) -> HelperBinding:
    with store.unit_of_work(write=False) as repo:
        return repo.get_binding(router_id, binding_id)


def assert_utc(moment: datetime | None) -> None:
    assert moment is not None
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)


# --- routers -----------------------------------------------------------------------------


def test_router_create_read(store: Store, make_router: MakeRouter) -> None:
    before = datetime.now(UTC)
    router = make_router(name="edge", project_id="p1", namespace="ns-edge")
    after = datetime.now(UTC)
    assert (router.name, router.project_id, router.namespace) == ("edge", "p1", "ns-edge")
    assert (router.status, router.status_reason, router.revision_number) == (
        Status.PENDING,
        "",
        1,
    )
    assert router.created_at == router.updated_at
    assert router.created_at is not None
    assert before <= router.created_at <= after
    stored = reload_router(store, router.id)
    assert stored == router
    assert_utc(stored.created_at)
    assert_utc(stored.updated_at)


def test_router_update_name_bumps_revision(store: Store, make_router: MakeRouter) -> None:
    router = make_router(name="old")
    with store.unit_of_work() as repo:
        updated = repo.update_router(router.id, name="new")
    assert (updated.name, updated.revision_number) == ("new", 2)
    assert updated.created_at == router.created_at
    assert updated.updated_at is not None
    assert router.updated_at is not None
    assert updated.updated_at >= router.updated_at
    assert reload_router(store, router.id) == updated


def test_router_update_to_the_same_name_changes_nothing(
    store: Store,
    make_router: MakeRouter,
    snapshot: Callable[[], Snapshot],
    notifications: list[frozenset[str]],
) -> None:
    router = make_router(name="same")
    before = snapshot()
    with store.unit_of_work() as repo:
        assert repo.update_router(router.id, name="same") == router
    assert snapshot() == before
    assert notifications == [frozenset({router.id})]  # the create only


def test_router_delete(store: Store, make_router: MakeRouter) -> None:
    router = make_router()
    with store.unit_of_work() as repo:
        assert repo.delete_router(router.id) == router
    with store.unit_of_work(write=False) as repo, pytest.raises(RouterNotFound):
        repo.get_router(router.id)


@pytest.mark.parametrize(
    "call",
    [
        lambda repo: repo.get_router(MISSING),
        lambda repo: repo.update_router(MISSING, name="x"),
        lambda repo: repo.delete_router(MISSING),
        lambda repo: repo.list_bindings(ALL, router_id=MISSING),
        lambda repo: repo.get_binding(MISSING, str(uuid.UUID(int=1))),
        lambda repo: repo.update_binding(MISSING, str(uuid.UUID(int=1)), port=22),
        lambda repo: repo.delete_binding(MISSING, str(uuid.UUID(int=1))),
    ],
)
def test_missing_router(store: Store, call: Callable[..., object]) -> None:
    with store.unit_of_work() as repo, pytest.raises(RouterNotFound) as info:
        call(repo)
    assert MISSING in str(info.value)


def test_namespace_is_unique(
    store: Store, make_router: MakeRouter, snapshot: Callable[[], Snapshot]
) -> None:
    first = make_router(namespace="shared-ns")
    before = snapshot()
    with pytest.raises(NamespaceInUse) as info:
        make_router(namespace="shared-ns")
    assert info.value.router_id == first.id
    assert "shared-ns" in str(info.value)
    assert first.id in str(info.value)
    assert snapshot() == before


def test_namespace_is_free_again_after_delete(store: Store, make_router: MakeRouter) -> None:
    first = make_router(namespace="reused")
    with store.unit_of_work() as repo:
        repo.delete_router(first.id)
    second = make_router(namespace="reused")
    assert reload_router(store, second.id).namespace == "reused"


def test_duplicate_router_id_is_a_conflict(store: Store, make_router: MakeRouter) -> None:
    first = make_router(namespace="ns-a")
    duplicate = new_router(name="r", project_id="p", namespace="ns-b", router_id=first.id)
    with pytest.raises(Conflict), store.unit_of_work() as repo:
        repo.add_router(duplicate)
    assert reload_router(store, first.id) == first


@pytest.mark.parametrize("namespace", ["ns-b", None], ids=["other-namespace", "same-namespace"])
def test_duplicate_router_id_is_router_exists(
    store: Store,
    make_router: MakeRouter,
    snapshot: Callable[[], Snapshot],
    namespace: str | None,
) -> None:
    """A router id given (adoption from Neutron) that is taken: said as such, even when the
    default namespace qrouter-<id> is taken too."""
    first = make_router()
    duplicate = new_router(name="r", project_id="p", namespace=namespace, router_id=first.id)
    before = snapshot()
    with pytest.raises(RouterExists) as info, store.unit_of_work() as repo:
        repo.add_router(duplicate)
    assert str(info.value) == f"Router {first.id} already exists"
    assert snapshot() == before


# --- bindings ----------------------------------------------------------------------------


def test_binding_create_read(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router(project_id="tenant")
    binding = make_binding(router, "udp", 69, "tftp")
    assert (binding.router_id, binding.project_id) == (router.id, "tenant")
    assert (binding.protocol, binding.port, binding.helper) == (Protocol.UDP, 69, "tftp")
    assert (binding.status, binding.status_reason, binding.revision_number) == (
        Status.PENDING,
        "",
        1,
    )
    assert binding.created_at == binding.updated_at
    stored = reload_binding(store, router.id, binding.id)
    assert stored == binding
    assert_utc(stored.created_at)
    assert_utc(stored.updated_at)
    assert reload_router(store, router.id).revision_number == 2
    with store.unit_of_work(write=False) as repo:
        assert repo.list_bindings(ALL, router_id=router.id) == [binding]
        assert repo.list_bindings(ALL) == [binding]


def test_binding_takes_its_project_from_the_router(store: Store, make_router: MakeRouter) -> None:
    router = make_router(project_id="tenant")
    smuggled = HelperBinding(
        id=str(uuid.uuid4()),
        router_id=router.id,
        project_id="intruder",
        protocol=Protocol.TCP,
        port=21,
        helper="ftp",
        status=Status.ACTIVE,
        revision_number=42,
    )
    with store.unit_of_work() as repo:
        stored = repo.add_binding(smuggled)
    assert (stored.project_id, stored.status, stored.revision_number) == (
        "tenant",
        Status.PENDING,
        1,
    )


def test_binding_on_a_missing_router(store: Store, make_router: MakeRouter) -> None:
    router = make_router()
    orphan = HelperBinding(
        id=str(uuid.uuid4()),
        router_id=MISSING,
        project_id=router.project_id,
        protocol=Protocol.TCP,
        port=21,
        helper="ftp",
    )
    with pytest.raises(RouterNotFound), store.unit_of_work() as repo:
        repo.add_binding(orphan)


def test_bindings_of(store: Store, make_router: MakeRouter, make_binding: MakeBinding) -> None:
    r1, r2, r3 = make_router(), make_router(), make_router()
    b_udp = make_binding(r1, "udp", 69, "tftp")
    b_tcp_high = make_binding(r1, "tcp", 2121, "ftp")
    b_tcp = make_binding(r1, "tcp", 21, "ftp")
    b_r2 = make_binding(r2, "udp", 5060, "sip")
    with store.unit_of_work(write=False) as repo:
        got = repo.bindings_of([r1.id, r2.id, r3.id, MISSING, r1.id])
    assert got == {
        r1.id: [
            reload_binding(store, r1.id, b_tcp.id),
            reload_binding(store, r1.id, b_tcp_high.id),
            reload_binding(store, r1.id, b_udp.id),
        ],
        r2.id: [b_r2],
        r3.id: [],
        MISSING: [],
    }
    with store.unit_of_work(write=False) as repo:
        assert repo.bindings_of([]) == {}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"port": 2121}, (Protocol.TCP, 2121, "ftp")),
        ({"helper": "sip"}, (Protocol.TCP, 21, "sip")),
        ({"protocol": Protocol.UDP}, (Protocol.UDP, 21, "ftp")),
        (
            {"protocol": Protocol.UDP, "port": 69, "helper": "tftp"},
            (Protocol.UDP, 69, "tftp"),
        ),
    ],
)
def test_binding_update(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    notifications: list[frozenset[str]],
    change: dict[str, object],
    expected: tuple[Protocol, int, str],
) -> None:
    router = make_router()
    binding = make_binding(router, "tcp", 21, "ftp")
    router_revision = reload_router(store, router.id).revision_number
    with store.unit_of_work() as repo:
        updated = repo.update_binding(router.id, binding.id, **change)  # type: ignore[arg-type]
    assert (updated.protocol, updated.port, updated.helper) == expected
    assert updated.revision_number == binding.revision_number + 1
    assert updated.created_at == binding.created_at
    assert updated.updated_at is not None
    assert binding.updated_at is not None
    assert updated.updated_at >= binding.updated_at
    assert reload_binding(store, router.id, binding.id) == updated
    assert reload_router(store, router.id).revision_number == router_revision + 1
    assert notifications[-1] == frozenset({router.id})


def test_binding_update_with_nothing_new_changes_nothing(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
    notifications: list[frozenset[str]],
) -> None:
    router = make_router()
    binding = make_binding(router)
    before, sent = snapshot(), len(notifications)
    with store.unit_of_work() as repo:
        assert repo.update_binding(router.id, binding.id) == binding
        assert repo.update_binding(router.id, binding.id, port=21, helper="ftp") == binding
    assert snapshot() == before
    assert len(notifications) == sent


def test_binding_delete(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    notifications: list[frozenset[str]],
) -> None:
    router = make_router()
    binding = make_binding(router)
    router_revision = reload_router(store, router.id).revision_number
    with store.unit_of_work() as repo:
        assert repo.delete_binding(router.id, binding.id) == binding
    with store.unit_of_work(write=False) as repo:
        with pytest.raises(BindingNotFound):
            repo.get_binding(router.id, binding.id)
        assert repo.list_bindings(ALL) == []
    assert reload_router(store, router.id).revision_number == router_revision + 1
    assert notifications[-1] == frozenset({router.id})
    with store.unit_of_work() as repo, pytest.raises(BindingNotFound):
        repo.delete_binding(router.id, binding.id)


# --- one helper per (protocol, port) -----------------------------------------------------


def test_duplicate_binding_is_a_conflict_naming_the_existing_one(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
) -> None:
    router = make_router()
    existing = make_binding(router, "tcp", 21, "ftp")
    before = snapshot()
    for helper in ("ftp", "sip"):  # the same helper again, or another one on the same port
        with pytest.raises(BindingConflict) as info:
            make_binding(router, "tcp", 21, helper)
        assert info.value.existing_id == existing.id
        assert existing.id in str(info.value)
        assert "tcp/21" in str(info.value)
    assert snapshot() == before


def test_a_binding_create_is_its_row_a_router_revision_a_change_and_an_audit_event(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding, plain_sql: PlainSql
) -> None:
    """A create writes its binding, the router's next revision, one change-log row and one
    audit event, all or (a conflict: the port taken) none of them."""
    router = make_router()

    def counts() -> tuple[int, int, int]:
        ((revision,),) = plain_sql(f"SELECT revision_number FROM routers WHERE id = '{router.id}'")
        ((changes,),) = plain_sql("SELECT count(*) FROM change_log")
        ((events,),) = plain_sql("SELECT count(*) FROM audit_events")
        return revision, changes, events

    revision, changes, events = counts()
    created = make_binding(router, "tcp", 21, "ftp")
    assert counts() == (revision + 1, changes + 1, events + 1)
    rows = plain_sql(
        f"SELECT router_id, project_id, port FROM conntrack_helpers WHERE id = '{created.id}'"
    )
    assert [tuple(row) for row in rows] == [(router.id, router.project_id, 21)]
    assert created.project_id == router.project_id
    with pytest.raises(BindingConflict):
        make_binding(router, "tcp", 21, "sip")
    assert counts() == (revision + 1, changes + 1, events + 1)


def test_same_port_other_protocol_or_other_router_is_fine(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    r1, r2 = make_router(), make_router()
    make_binding(r1, "tcp", 5060, "sip")
    make_binding(r1, "udp", 5060, "sip")
    make_binding(r2, "tcp", 5060, "sip")
    with store.unit_of_work(write=False) as repo:
        assert len(repo.list_bindings(ALL)) == 3


@pytest.mark.parametrize(
    ("start", "change"),
    [
        (("tcp", 2121), {"port": 21}),
        (("udp", 21), {"protocol": Protocol.TCP}),
        (("udp", 5060), {"protocol": Protocol.TCP, "port": 21}),
        (("tcp", 2121), {"port": 21, "helper": "ftp"}),
    ],
)
def test_update_onto_a_taken_protocol_and_port_is_a_conflict(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
    start: tuple[str, int],
    change: dict[str, object],
) -> None:
    router = make_router()
    taken = make_binding(router, "tcp", 21, "sip")
    moving = make_binding(router, *start, "sip")
    before = snapshot()
    with pytest.raises(BindingConflict) as info, store.unit_of_work() as repo:
        repo.update_binding(router.id, moving.id, **change)  # type: ignore[arg-type]
    assert info.value.existing_id == taken.id
    assert taken.id in str(info.value)
    assert snapshot() == before


def test_update_keeping_its_own_protocol_and_port_is_not_a_conflict(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    binding = make_binding(router, "tcp", 5060, "sip")
    with store.unit_of_work() as repo:
        updated = repo.update_binding(
            router.id, binding.id, protocol=Protocol.TCP, port=5060, helper="ftp"
        )
    assert (updated.helper, updated.revision_number) == ("ftp", 2)


# --- a binding is only found under its own router ----------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda repo, rid, bid: repo.get_binding(rid, bid),
        lambda repo, rid, bid: repo.update_binding(rid, bid, port=2121),
        lambda repo, rid, bid: repo.update_binding(rid, bid, helper="sip"),
        lambda repo, rid, bid: repo.delete_binding(rid, bid),
    ],
    ids=["get", "update-port", "update-helper", "delete"],
)
def test_binding_of_another_router_is_not_found(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
    notifications: list[frozenset[str]],
    call: Callable[..., object],
) -> None:
    owner = make_router(project_id="victim")
    other = make_router(project_id="attacker")
    binding = make_binding(owner, "tcp", 21, "ftp")
    before, sent = snapshot(), len(notifications)
    with pytest.raises(BindingNotFound) as info, store.unit_of_work() as repo:
        call(repo, other.id, binding.id)
    assert binding.id in str(info.value)
    assert owner.id not in str(info.value)  # nothing about the owner leaks
    assert snapshot() == before
    assert len(notifications) == sent


# --- status (agents) ---------------------------------------------------------------------


def test_binding_status_is_written_for_the_current_revision(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    notifications: list[frozenset[str]],
) -> None:
    router = make_router()
    binding = make_binding(router)
    router_before = reload_router(store, router.id)
    sent = len(notifications)
    with store.unit_of_work() as repo:
        assert repo.set_binding_status(
            binding.id, Status.ACTIVE, "", revision_number=binding.revision_number
        )
    stored = reload_binding(store, router.id, binding.id)
    assert (stored.status, stored.status_reason) == (Status.ACTIVE, "")
    # A status write is not a user change: no revision, no timestamp, no notification.
    assert stored.revision_number == binding.revision_number
    assert stored.updated_at == binding.updated_at
    assert reload_router(store, router.id) == router_before
    assert len(notifications) == sent


def test_router_status_is_written_for_the_current_revision(
    store: Store, make_router: MakeRouter, notifications: list[frozenset[str]]
) -> None:
    router = make_router()
    sent = len(notifications)
    with store.unit_of_work() as repo:
        assert repo.set_router_status(
            router.id, Status.ERROR, "namespace qrouter-x not found", revision_number=1
        )
    stored = reload_router(store, router.id)
    assert (stored.status, stored.status_reason) == (Status.ERROR, "namespace qrouter-x not found")
    assert (stored.revision_number, stored.updated_at) == (1, router.updated_at)
    assert len(notifications) == sent


def test_stale_status_is_not_written(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    snapshot: Callable[[], Snapshot],
) -> None:
    router = make_router()
    binding = make_binding(router)
    # An agent reconciled revision 1; meanwhile the user changed the binding (revision 2).
    with store.unit_of_work() as repo:
        repo.update_binding(router.id, binding.id, port=2121)
    before = snapshot()
    with store.unit_of_work() as repo:
        assert not repo.set_binding_status(binding.id, Status.ACTIVE, "", revision_number=1)
        assert not repo.set_binding_status(binding.id, Status.ACTIVE, "", revision_number=3)
        assert not repo.set_router_status(router.id, Status.ACTIVE, "", revision_number=1)
        assert not repo.set_binding_status(MISSING, Status.ACTIVE, "", revision_number=1)
        assert not repo.set_router_status(MISSING, Status.ACTIVE, "", revision_number=1)
    assert snapshot() == before
    assert reload_binding(store, router.id, binding.id).status is Status.PENDING


def test_status_reason_is_stored_as_one_bounded_line(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    binding = make_binding(router)
    with store.unit_of_work() as repo:
        repo.set_binding_status(
            binding.id, Status.ERROR, "nft: line\nbreak\x00\x1b[2J" + "x" * 5000, revision_number=1
        )
        repo.set_router_status(router.id, Status.ERROR, "a\u202eb\nc", revision_number=2)
    reason = reload_binding(store, router.id, binding.id).status_reason
    assert reason.startswith("nft: line break  [2J")
    assert len(reason) == 1024
    assert reason.isprintable()
    assert reload_router(store, router.id).status_reason == "a b c"


def test_user_change_resets_status_to_pending(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    binding = make_binding(router)
    with store.unit_of_work() as repo:
        assert repo.set_binding_status(binding.id, Status.ERROR, "helper gone", revision_number=1)
    with store.unit_of_work() as repo:
        updated = repo.update_binding(router.id, binding.id, helper="sip")
    assert (updated.status, updated.status_reason, updated.revision_number) == (
        Status.PENDING,
        "",
        2,
    )
    assert reload_binding(store, router.id, binding.id) == updated


def test_revisions_count_every_user_change(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()  # 1
    a = make_binding(router, "tcp", 21, "ftp")  # 2
    b = make_binding(router, "udp", 69, "tftp")  # 3
    with store.unit_of_work() as repo:
        repo.update_binding(router.id, a.id, port=2121)  # 4
        repo.update_router(router.id, name="renamed")  # 5
        repo.delete_binding(router.id, b.id)  # 6
        repo.set_router_status(router.id, Status.ACTIVE, "", revision_number=6)  # not counted
    assert reload_router(store, router.id).revision_number == 6
    assert reload_router(store, router.id).status is Status.ACTIVE
    assert reload_binding(store, router.id, a.id).revision_number == 2


# --- router deletion and tombstones ------------------------------------------------------


def test_delete_router_removes_its_bindings_and_leaves_a_tombstone(
    store: Store,
    make_router: MakeRouter,
    make_binding: MakeBinding,
    notifications: list[frozenset[str]],
) -> None:
    doomed = make_router(namespace="ns-doomed")
    kept = make_router(namespace="ns-kept")
    for port in (21, 2121, 10021):
        make_binding(doomed, "tcp", port, "ftp")
    survivor = make_binding(kept, "tcp", 21, "ftp")
    with store.unit_of_work() as repo:
        repo.delete_router(doomed.id)
    assert notifications[-1] == frozenset({doomed.id})
    with store.unit_of_work(write=False) as repo:
        assert repo.list_bindings(ALL) == [survivor]
        assert repo.tombstones() == {doomed.id: "ns-doomed"}
    with store.unit_of_work() as repo:
        repo.clear_tombstone(doomed.id)
        repo.clear_tombstone(MISSING)  # clearing twice or for nothing is harmless
    with store.unit_of_work(write=False) as repo:
        assert repo.tombstones() == {}


def test_recreating_a_router_id_clears_its_tombstone(store: Store, make_router: MakeRouter) -> None:
    router = make_router(namespace="ns-1")
    with store.unit_of_work() as repo:
        repo.delete_router(router.id)
    again = new_router(name="back", project_id="p", namespace="ns-2", router_id=router.id)
    with store.unit_of_work() as repo:
        repo.add_router(again)
        assert repo.tombstones() == {}


# --- timestamps --------------------------------------------------------------------------


def test_timestamps_filter_and_round_trip_as_utc(
    store: Store, make_router: MakeRouter, make_binding: MakeBinding
) -> None:
    router = make_router()
    binding = make_binding(router)
    assert binding.created_at is not None
    # The same instant written with another UTC offset is the same instant.
    elsewhere = binding.created_at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    with store.unit_of_work(write=False) as repo:
        stored_router = repo.get_router(router.id)
        exact = repo.list_bindings(ListQuery(filters={"created_at": (binding.created_at,)}))
        shifted = repo.list_bindings(ListQuery(filters={"created_at": (elsewhere,)}))
    assert exact == shifted == [binding]
    for moment in (
        stored_router.created_at,
        stored_router.updated_at,
        exact[0].created_at,
        exact[0].updated_at,
    ):
        assert_utc(moment)
