"""The cold sync's per-binding fast paths give what the plain ones give: desired bindings
restored from rows by position with the checks inline (restore_desired) equal the checked
keyword restore, and the assignments derived in one pass with their per-binding index equal
assignments_for() and _by_binding(); a cold sync then a partial one still verify (fake kernel,
real SQLite store). A process running an agent collects its garbage less often (gcpolicy)."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.agent import Action, Agent, LocalStoreSource
from cthm.agent.gcpolicy import THRESHOLDS
from cthm.agent.reconciler import _assignments_by_binding, _by_binding
from cthm.domain import (
    Direction,
    HelperBinding,
    HelperCatalog,
    Protocol,
    Status,
    assignments_for,
    new_binding,
    new_router,
    restore_binding,
)
from cthm.netfilter import FakeNftables, NftablesBackend
from cthm.store import Store
from cthm.store.desired import binding_row_problem, restore_desired

ROUTER = "00000000-0000-4000-8000-000000000001"
# ftp/sip allowed; tftp not (left out by the catalog); "nope" no kernel helper at all.
CATALOG = HelperCatalog(allowed=["ftp:tcp", "sip", "irc:tcp"])

_ids = st.integers(0, 40).map(lambda i: f"00000000-0000-4000-8000-{i:012d}")
_rows = st.tuples(
    _ids,
    st.sampled_from(["p1", "p2"]),
    st.one_of(st.sampled_from(["tcp", "udp"]), st.sampled_from(["sctp", "", "TCP"]), st.none()),
    st.one_of(st.integers(1, 8), st.sampled_from([0, 65535, 65536, -1]), st.just("21")),
    st.one_of(st.sampled_from(["ftp", "sip", "tftp"]), st.none(), st.integers()),
    st.one_of(st.sampled_from(["ingress", "output"]), st.sampled_from(["egress", None])),
    st.sampled_from(["ACTIVE", "PENDING", "ERROR", "bogus"]),
    st.sampled_from(["", "why"]),
    st.integers(1, 5),
)


def _reference(rows: list[tuple[Any, ...]]) -> tuple[list[HelperBinding], list[Any]]:
    """restore_desired() as it was: the checks by function, the keyword restore."""
    bindings, rejected = [], []
    for b_id, project, protocol, port, helper, direction, status, reason, revision in rows:
        problem = binding_row_problem(protocol, port, helper, direction)
        if problem:
            rejected.append((b_id, revision, problem))
            continue
        bindings.append(
            restore_binding(
                id=b_id,
                router_id=ROUTER,
                project_id=project,
                protocol=Protocol(protocol),
                port=port,
                helper=helper,
                direction=Direction(direction),
                status=Status(status) if status in Status.__members__ else Status.PENDING,
                status_reason=reason,
                revision_number=revision,
                created_at=None,
                updated_at=None,
            )
        )
    return bindings, rejected


@settings(max_examples=200, deadline=None)
@given(st.lists(_rows, max_size=30))
def test_restored_rows_equal_the_checked_restore(rows: list[tuple[Any, ...]]) -> None:
    got = restore_desired(ROUTER, rows)
    want = _reference(rows)
    assert got == want
    for binding in got[0]:  # every field set, of the types the rest relies on
        assert type(binding) is HelperBinding
        assert isinstance(binding.protocol, Protocol)
        assert isinstance(binding.direction, Direction)
        assert isinstance(binding.status, Status)


_bindings = st.lists(
    st.tuples(
        _ids,
        st.sampled_from([Protocol.TCP, Protocol.UDP]),
        st.integers(1, 6),
        st.sampled_from(["ftp", "sip", "tftp", "irc"]),
        st.sampled_from([Direction.INGRESS, Direction.OUTPUT]),
        st.integers(1, 3),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(_bindings)
def test_one_pass_derive_equals_assignments_for_and_its_index(
    specs: list[tuple[str, Protocol, int, str, Direction, int]],
) -> None:
    # Merges (two bindings on one key), bindings the catalog leaves out, repeated ids.
    usable = [
        restore_binding(
            id=b_id,
            router_id=ROUTER,
            project_id="p",
            protocol=protocol,
            port=port,
            helper=helper,
            direction=direction,
            revision_number=revision,
        )
        for b_id, protocol, port, helper, direction, revision in specs
    ]
    assignments, by_binding = _assignments_by_binding(CATALOG, usable)
    want = assignments_for(CATALOG, usable)
    assert assignments == want
    assert by_binding == _by_binding(usable, want)


def test_a_cold_sync_then_a_partial_one_verify(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fast.db'}")
    store.migrate()
    kernel = FakeNftables()
    kernel.add_namespace("qrouter-fast")
    catalog = HelperCatalog()
    backend = NftablesBackend(kernel)
    agent = Agent(LocalStoreSource(store), backend, catalog)
    try:
        with store.unit_of_work() as repo:
            router = repo.add_router(new_router(name="r", project_id="p", namespace="qrouter-fast"))
            for port in range(2000, 2100):
                repo.add_binding(
                    new_binding(catalog, router, protocol="tcp", port=port, helper="ftp")
                )
        assert agent.reconciler.reconcile(router.id).action is Action.APPLIED
        with store.unit_of_work() as repo:
            added = repo.add_binding(
                new_binding(catalog, router, protocol="tcp", port=21, helper="ftp")
            )
        result = agent.reconciler.reconcile(router.id)
        assert (result.action, result.sync) == (Action.APPLIED, "partial")
        with store.unit_of_work(write=False) as repo:
            bindings = repo.desired_bindings(router.id)[0]
            assert {b.status for b in bindings} == {Status.ACTIVE}
            assert added.id in {b.id for b in bindings}
            assert repo.get_router(router.id).status is Status.ACTIVE
        assert backend.read("qrouter-fast") == backend.desired(assignments_for(catalog, bindings))
    finally:
        store.close()


def test_an_agent_collects_garbage_less_often_unless_the_process_chose(tmp_path: Path) -> None:
    before = gc.get_threshold()
    store = Store(f"sqlite:///{tmp_path / 'gc.db'}")
    store.migrate()
    try:
        for chosen, expected in (((700, 10, 10), THRESHOLDS), ((5000, 7, 7), (5000, 7, 7))):
            gc.set_threshold(*chosen)
            agent = Agent(LocalStoreSource(store), NftablesBackend(FakeNftables()), HelperCatalog())
            agent.start()
            try:
                assert gc.get_threshold() == expected
            finally:
                agent.stop()
    finally:
        gc.set_threshold(*before)
        store.close()
