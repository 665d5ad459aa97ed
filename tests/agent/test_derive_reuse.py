"""What a reconcile derives from the desired state is reused only while it is what a rebuild
would give: the partial sync's edited assignments equal assignments_for() of the new bindings,
and a full sync of unchanged bindings (a no-op resync) still asks the kernel for its helpers."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from cthm.agent import Action, Agent, LocalStoreSource
from cthm.agent.ports import BindingEdit
from cthm.agent.reconciler import _by_binding, _edited_assignments
from cthm.domain import (
    Direction,
    HelperBinding,
    HelperCatalog,
    ListQuery,
    Protocol,
    Status,
    assignments_for,
    new_binding,
    new_router,
    restore_binding,
)
from cthm.netfilter import FakeNftables, NftablesBackend
from cthm.store import Store

CATALOG = HelperCatalog()
KINDS = [
    ("ftp", Protocol.TCP),
    ("tftp", Protocol.UDP),
    ("sip", Protocol.UDP),
    ("irc", Protocol.TCP),
]


def binding(index: int, port: int, revision: int = 1) -> HelperBinding:
    helper, protocol = KINDS[index % len(KINDS)]
    return restore_binding(
        id=f"b{index:04d}",
        router_id="r",
        project_id="p",
        protocol=protocol,
        port=port,
        helper=helper,
        direction=Direction.INGRESS if index % 3 else Direction.OUTPUT,
        status=Status.ACTIVE,
        status_reason="",
        revision_number=revision,
        created_at=None,
        updated_at=None,
    )


def test_edited_assignments_equal_a_rebuild() -> None:
    rng = random.Random(14)
    for _ in range(200):
        last = [binding(i, 1000 + i) for i in range(rng.randint(0, 120))]
        last_assignments = assignments_for(CATALOG, last)
        last_by_binding = _by_binding(last, last_assignments)
        assert last_by_binding is not None
        now = list(last)
        changed: set[str] = set()  # as the revision notes name them
        for _ in range(rng.randint(0, 6)):
            choice = rng.random()
            if choice < 0.35 and now:  # deleted
                changed.add(now.pop(rng.randrange(len(now))).id)
            elif choice < 0.7 and now:  # changed: a new revision on another port
                at = rng.randrange(len(now))
                old = now[at]
                index = int(old.id[1:])
                now[at] = binding(index, 20000 + rng.randrange(20000), old.revision_number + 1)
                changed.add(old.id)
            else:  # added
                now.append(binding(5000 + rng.randrange(5000), 40000 + rng.randrange(20000)))
                changed.add(now[-1].id)
        want = assignments_for(CATALOG, now)
        # Found by looking at every binding, and told by the source's edit (the bindings read
        # again: those of the changed ids still there).
        fresh = tuple(b for b in now if b.id in changed)
        edit = BindingEdit(tuple(last), frozenset(changed), fresh)
        for changes in (None, edit):
            edited = _edited_assignments(
                CATALOG, last_assignments, last_by_binding, now, changes=changes
            )
            if edited is None:  # allowed (a merge); then the caller rebuilds
                continue
            assignments, by_binding, added = edited
            assert assignments == want
            assert by_binding == _by_binding(now, want)
            assert set(added) <= set(want)


def test_a_full_sync_of_unchanged_bindings_asks_the_kernel_for_its_helpers_again(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    try:
        kernel = FakeNftables(helper_types=["ftp"])  # no sip module yet
        kernel.add_namespace("qrouter-reuse")
        agent = Agent(LocalStoreSource(store), NftablesBackend(kernel), CATALOG)
        with store.unit_of_work() as repo:
            router = repo.add_router(
                new_router(name="r", project_id="p", namespace="qrouter-reuse")
            )
            repo.add_binding(new_binding(CATALOG, router, protocol="tcp", port=21, helper="ftp"))
            sip = repo.add_binding(
                new_binding(CATALOG, router, protocol="udp", port=5060, helper="sip")
            ).id
        agent.sync_all()
        agent.sync_all()  # a no-op resync: nothing changed
        with store.unit_of_work(write=False) as repo:
            statuses = {b.id: b.status for b in repo.list_bindings(ListQuery(), router.id)}
        assert statuses[sip] is Status.ERROR

        # The kernel gains the module (loaded by hand); the capabilities' cache expires.
        kernel._kernel[("sip", "udp")] = True
        agent.capabilities.invalidate()
        results = agent.sync_all()  # the same bindings, read afresh

        assert [r.action for r in results] == [Action.APPLIED]
        with store.unit_of_work(write=False) as repo:
            statuses = {b.id: b.status for b in repo.list_bindings(ListQuery(), router.id)}
        assert set(statuses.values()) == {Status.ACTIVE}
        table = NftablesBackend(kernel).read("qrouter-reuse")
        assert table is not None
        assert {a.helper for a in table.assignments} == {"ftp", "sip"}
    finally:
        store.close()


def test_partial_syncs_of_reloaded_edits_keep_the_kernel_equal_to_a_rebuild(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    try:
        kernel = FakeNftables()
        kernel.add_namespace("qrouter-edits")
        backend = NftablesBackend(kernel)
        agent = Agent(LocalStoreSource(store), backend, CATALOG)
        with store.unit_of_work() as repo:
            router = repo.add_router(
                new_router(name="r", project_id="p", namespace="qrouter-edits")
            )
            ids = [
                repo.add_binding(
                    new_binding(CATALOG, router, protocol="tcp", port=2000 + i, helper="ftp")
                ).id
                for i in range(100)
            ]
        assert agent.sync_all()[0].sync == "full"

        def add(port: int) -> None:
            with store.unit_of_work() as repo:
                repo.add_binding(
                    new_binding(CATALOG, router, protocol="tcp", port=port, helper="ftp")
                )

        def move(binding_id: str, port: int) -> None:
            with store.unit_of_work() as repo:
                repo.update_binding(router.id, binding_id, port=port)

        def remove(binding_id: str) -> None:
            with store.unit_of_work() as repo:
                repo.delete_binding(router.id, binding_id)

        def several() -> None:  # several changes, one reload
            add(30000)
            remove(ids[99])
            move(ids[1], 1)

        changes: list[Callable[[], None]] = [
            lambda: add(21),
            lambda: move(ids[50], 9000),  # the same binding, another port
            lambda: remove(ids[0]),
            several,
        ]
        for change in changes:
            change()
            result = agent.reconciler.reconcile(router.id)
            assert (result.action, result.sync) == (Action.APPLIED, "partial")
            with store.unit_of_work(write=False) as repo:
                stored = repo.list_bindings(ListQuery(), router.id)
            assert backend.read("qrouter-edits") == backend.desired(
                assignments_for(CATALOG, stored)
            )
    finally:
        store.close()
