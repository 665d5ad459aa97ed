"""reload() from the store's revision notes (issue 14): the bindings each revision committed by
this process changed are named, so a reload reads only those; any revision the notes do not
cover (another process's write, an edit behind the store's back, a write path that does not
say) makes the reload find them by scanning, as before. Either way reload() == load()."""

from __future__ import annotations

import pytest
from agent_support import add_ftp_router
from sqlalchemy import update

from cthm.agent import LocalStoreSource
from cthm.domain import Direction, HelperCatalog, Protocol, new_binding
from cthm.store import Store
from cthm.store.revisions import NOTES_PER_ROUTER, RevisionNotes
from cthm.store.tables import BindingRow, RouterRow

CATALOG = HelperCatalog()


def revision(store: Store, router_id: str) -> int:
    with store.unit_of_work(write=False) as repo:
        found = repo.router_revision(router_id)
    assert found is not None
    return found


def test_notes_name_the_bindings_changed_and_reload_equals_load(store: Store) -> None:
    source = LocalStoreSource(store)
    router, ids = add_ftp_router(store, [21, 2121, 3000], "qr-notes")
    last = source.load(router.id)
    assert last is not None
    since = last.router.revision_number
    with store.unit_of_work() as repo:
        added = repo.add_binding(
            new_binding(CATALOG, router, protocol="udp", port=69, helper="tftp")
        ).id
        repo.update_binding(router.id, ids[2], port=3001)
        repo.delete_binding(router.id, ids[0])
        repo.update_router(router.id, name="renamed")  # a revision that changes no binding
    now = revision(store, router.id)
    assert now == since + 4
    assert store.revision_notes.changed(router.id, since, now) == frozenset({added, ids[2], ids[0]})
    reloaded = source.reload(router.id, last)
    assert reloaded == source.load(router.id)
    assert reloaded is not None
    assert [(b.protocol, b.port) for b in reloaded.bindings] == [
        (Protocol.TCP, 2121),
        (Protocol.TCP, 3001),
        (Protocol.UDP, 69),
    ]
    assert reloaded.router.name == "renamed"


def test_another_process_write_leaves_a_gap_and_reload_still_equals_load(
    store: Store, database_url: str
) -> None:
    source = LocalStoreSource(store)
    router, ids = add_ftp_router(store, [21, 2121], "qr-notes")
    last = source.load(router.id)
    assert last is not None
    since = last.router.revision_number
    other = Store(database_url)  # another process's view of the same database
    try:
        with other.unit_of_work() as repo:
            repo.delete_binding(router.id, ids[1])
            repo.add_binding(
                new_binding(
                    CATALOG, router, protocol="tcp", port=990, helper="ftp", direction="output"
                )
            )
    finally:
        other.close()
    with store.unit_of_work() as repo:  # and one of ours after it
        repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=4000, helper="ftp"))
    assert store.revision_notes.changed(router.id, since, revision(store, router.id)) is None
    reloaded = source.reload(router.id, last)
    assert reloaded == source.load(router.id)
    assert reloaded is not None
    assert [(b.port, b.direction) for b in reloaded.bindings] == [
        (21, Direction.INGRESS),
        (990, Direction.OUTPUT),
        (4000, Direction.INGRESS),
    ]


def test_an_edit_behind_the_stores_back_that_moves_the_revision_is_read(store: Store) -> None:
    source = LocalStoreSource(store)
    router, ids = add_ftp_router(store, [21, 2121], "qr-notes")
    last = source.load(router.id)
    assert last is not None
    with store.unit_of_work() as repo:
        session = repo._session  # the edit a person makes in SQL, outside the repository
        session.execute(update(BindingRow).where(BindingRow.id == ids[0]).values(port=22))
        session.execute(update(BindingRow).where(BindingRow.id == ids[0]).values(revision_number=2))
        session.execute(
            update(RouterRow)
            .where(RouterRow.id == router.id)
            .values(revision_number=RouterRow.revision_number + 1)
        )
    reloaded = source.reload(router.id, last)
    assert reloaded == source.load(router.id)
    assert reloaded is not None
    assert [b.port for b in reloaded.bindings] == [22, 2121]


def test_a_rolled_back_write_leaves_no_note(store: Store) -> None:
    router, _ = add_ftp_router(store, [21], "qr-notes")
    since = revision(store, router.id)

    def undone() -> None:
        with store.unit_of_work() as repo:
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=990, helper="ftp"))
            raise RuntimeError("undone")

    with pytest.raises(RuntimeError):
        undone()
    assert revision(store, router.id) == since
    assert store.revision_notes.changed(router.id, since, since + 1) is None
    with store.unit_of_work() as repo:
        kept = repo.add_binding(
            new_binding(CATALOG, router, protocol="tcp", port=4000, helper="ftp")
        ).id
    assert store.revision_notes.changed(router.id, since, since + 1) == frozenset({kept})


def test_revision_notes_are_bounded_and_say_none_when_not_covered() -> None:
    notes = RevisionNotes()
    assert notes.changed("r", 5, 5) == frozenset()  # nothing new
    assert notes.changed("r", 5, 6) is None
    notes.note([("r", 6, "a", None), ("r", 7, "", None), ("r", 8, None, None)])
    assert notes.changed("r", 5, 7) == frozenset({"a"})
    assert notes.changed("r", 5, 8) is None  # revision 8's write did not say what it changed
    assert notes.changed("r", 7, 6) is None
    notes.note(("r", 8 + n, f"b{n}", None) for n in range(1, NOTES_PER_ROUTER + 1))
    assert notes.changed("r", 5, 7) is None  # the oldest notes went
    last = 8 + NOTES_PER_ROUTER
    assert notes.changed("r", last - 2, last) == frozenset(
        {
            f"b{NOTES_PER_ROUTER - 1}",
            f"b{NOTES_PER_ROUTER}",
        }
    )
    notes.forget(["r"])
    assert notes.changed("r", last - 1, last) is None
