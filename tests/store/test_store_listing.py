"""List filters, sort order and keyset pagination over many rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from cthm.domain import (
    HelperBinding,
    HelperCatalog,
    InvalidInput,
    ListQuery,
    MarkerNotFound,
    Protocol,
    Router,
    SortDir,
    Status,
    new_binding,
    new_router,
)
from cthm.domain.query import DEFAULT_PAGE_LIMIT
from cthm.store import BINDING_FIELDS, ROUTER_FIELDS, Store

ASC, DESC = SortDir.ASC, SortDir.DESC
T = TypeVar("T", Router, HelperBinding)
HELPERS = [("tcp", "ftp"), ("udp", "tftp"), ("tcp", "sip"), ("udp", "sip"), ("udp", "RAS")]
STATUSES = [Status.PENDING, Status.ACTIVE, Status.ERROR]


@dataclass(frozen=True)
class Data:
    routers: list[Router]
    bindings: list[HelperBinding]  # as stored, after status writes


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store for the module (overrides the per-test one): these tests only read."""
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('listing') / 'cthm.db'}")
    store.migrate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(scope="module")
def data(store: Store) -> Data:
    """Three routers (names with ties), 60 bindings on the first, 15 on the second, none on
    the third; ports repeat across protocols so sort keys tie often."""
    catalog = HelperCatalog()
    with store.unit_of_work() as repo:
        routers = [
            repo.add_router(new_router(name=name, project_id=project, namespace=f"ns-{i}"))
            for i, (name, project) in enumerate([("b", "p1"), ("a", "p2"), ("b", "p1")])
        ]
        for count, router in zip((60, 15), routers, strict=False):
            for i in range(count):
                protocol, helper = HELPERS[i % len(HELPERS)]
                port = 1000 + (i * 7) % 23 + (0 if protocol == "tcp" else 1)
                if any(
                    (b.protocol, b.port) == (protocol, port)
                    for b in repo.list_bindings(ListQuery(), router_id=router.id)
                ):
                    port += 100 + i
                repo.add_binding(
                    new_binding(catalog, router, protocol=protocol, port=port, helper=helper)
                )
    with store.unit_of_work() as repo:
        for i, binding in enumerate(repo.list_bindings(ListQuery())):
            status = STATUSES[i % 3]
            if status is not Status.PENDING:
                repo.set_binding_status(binding.id, status, f"r{i}", revision_number=1)
        # A few updates so revision_number varies.
        for binding in repo.list_bindings(ListQuery(filters={"port": (1001, 1002, 1003)})):
            repo.update_binding(binding.router_id, binding.id, helper="sip")
    with store.unit_of_work(write=False) as repo:
        # Routers in creation order: the first holds 60 bindings, the second 15, the third none.
        return Data([repo.get_router(r.id) for r in routers], repo.list_bindings(ListQuery()))


def expected_order(items: list[T], sort: tuple[tuple[str, SortDir], ...]) -> list[T]:
    """Python's view of the contract: sort keys in order, then id ascending."""
    result = sorted(items, key=lambda item: item.id)
    for field, direction in reversed(sort):  # stable sorts, last key first
        result.sort(key=lambda item: getattr(item, field), reverse=direction is DESC)
    return result


def walk(list_page: Callable[[ListQuery], list[T]], query: ListQuery, total: int) -> Iterator[T]:
    """Every page with limit+marker until a short page; bounded by the number of rows."""
    assert query.limit
    marker: str | None = None
    for _ in range(total // query.limit + 2):
        page = list_page(
            ListQuery(
                filters=query.filters,
                sort=query.sort,
                limit=query.limit,
                marker=marker,
                page_reverse=query.page_reverse,
            )
        )
        yield from page
        if len(page) < query.limit:
            return
        marker = page[-1].id
    raise AssertionError("pagination did not end")


BINDING_SORTS: list[tuple[tuple[str, SortDir], ...]] = [
    (),
    (("port", ASC),),
    (("port", DESC),),
    (("helper", ASC), ("port", DESC)),
    (("status", DESC),),
    (("protocol", ASC), ("port", ASC)),
    (("protocol", DESC), ("helper", DESC), ("status", ASC)),
    (("created_at", DESC),),
    (("revision_number", DESC), ("updated_at", ASC)),
    (("router_id", ASC), ("port", DESC)),
    (("id", DESC),),
]


@pytest.mark.parametrize("sort", BINDING_SORTS, ids=repr)
@pytest.mark.parametrize("limit", [1, 7, 75, 200])
def test_pages_walk_every_binding_once_in_order(
    store: Store, data: Data, sort: tuple[tuple[str, SortDir], ...], limit: int
) -> None:
    expected = expected_order(data.bindings, sort)
    assert len(expected) == 75
    with store.unit_of_work(write=False) as repo:
        whole = repo.list_bindings(ListQuery(sort=sort))
        forward = list(walk(repo.list_bindings, ListQuery(sort=sort, limit=limit), 75))
        backward = list(
            walk(repo.list_bindings, ListQuery(sort=sort, limit=limit, page_reverse=True), 75)
        )
    assert [b.id for b in whole] == [b.id for b in expected]
    assert [b.id for b in forward] == [b.id for b in expected]
    assert [b.id for b in backward] == [b.id for b in reversed(expected)]


@pytest.mark.parametrize(
    "sort",
    [(), (("name", ASC),), (("name", DESC), ("project_id", ASC)), (("updated_at", DESC),)],
    ids=repr,
)
def test_pages_walk_every_router_once_in_order(
    store: Store, data: Data, sort: tuple[tuple[str, SortDir], ...]
) -> None:
    expected = expected_order(data.routers, sort)
    with store.unit_of_work(write=False) as repo:
        forward = list(walk(repo.list_routers, ListQuery(sort=sort, limit=2), 3))
        backward = list(
            walk(repo.list_routers, ListQuery(sort=sort, limit=2, page_reverse=True), 3)
        )
    assert forward == expected
    assert backward == expected[::-1]


def test_pages_of_one_routers_bindings(store: Store, data: Data) -> None:
    router = data.routers[1]
    mine = [b for b in data.bindings if b.router_id == router.id]
    sort = (("port", DESC),)
    with store.unit_of_work(write=False) as repo:
        got = list(
            walk(
                lambda q: repo.list_bindings(q, router_id=router.id),
                ListQuery(sort=sort, limit=4),
                len(mine),
            )
        )
        assert repo.list_bindings(ListQuery(), router_id=data.routers[2].id) == []
    assert got == expected_order(mine, sort)


FILTERS: list[tuple[dict[str, tuple[object, ...]], Callable[[HelperBinding], bool]]] = [
    ({"port": (1001, 1004)}, lambda b: b.port in (1001, 1004)),
    ({"protocol": (Protocol.UDP,)}, lambda b: b.protocol is Protocol.UDP),
    (
        {"protocol": (Protocol.UDP,), "helper": ("sip", "RAS")},
        lambda b: b.protocol is Protocol.UDP and b.helper in ("sip", "RAS"),
    ),
    (
        {"status": (Status.ACTIVE, Status.ERROR)},
        lambda b: b.status in (Status.ACTIVE, Status.ERROR),
    ),
    ({"status_reason": ("r4", "r5")}, lambda b: b.status_reason in ("r4", "r5")),
    ({"revision_number": (2,)}, lambda b: b.revision_number == 2),
    ({"project_id": ("p2",)}, lambda b: b.project_id == "p2"),
    ({"helper": ()}, lambda b: False),
    ({"helper": ("FTP",)}, lambda b: False),
]


@pytest.mark.parametrize(("filters", "matches"), FILTERS)
def test_filters(
    store: Store,
    data: Data,
    filters: dict[str, tuple[object, ...]],
    matches: Callable[[HelperBinding], bool],
) -> None:
    expected = [b for b in expected_order(data.bindings, ()) if matches(b)]
    with store.unit_of_work(write=False) as repo:
        got = repo.list_bindings(ListQuery(filters=filters))
        paged = list(walk(repo.list_bindings, ListQuery(filters=filters, limit=3), len(expected)))
    assert got == paged == expected
    if filters not in ({"helper": ()}, {"helper": ("FTP",)}):
        assert expected, "the filter must select something for this test to mean anything"
        assert len(expected) < len(data.bindings)


def test_filter_by_ids_and_timestamps(store: Store, data: Data) -> None:
    some = data.bindings[3:6]
    with store.unit_of_work(write=False) as repo:
        by_id = repo.list_bindings(ListQuery(filters={"id": tuple(b.id for b in some)}))
        by_router = repo.list_bindings(ListQuery(filters={"router_id": (data.routers[1].id,)}))
        by_time = repo.list_bindings(
            ListQuery(filters={"updated_at": tuple(b.updated_at for b in some)})
        )
        routers = repo.list_routers(ListQuery(filters={"name": ("b",), "project_id": ("p1",)}))
    assert by_id == expected_order(some, ())
    assert {b.id for b in some} <= {b.id for b in by_time}
    assert by_router == [
        b for b in expected_order(data.bindings, ()) if b.router_id == data.routers[1].id
    ]
    assert len(by_router) == 15
    assert routers == expected_order([data.routers[0], data.routers[2]], ())


def test_default_limit_is_not_applied_by_the_store(store: Store, data: Data) -> None:
    # Paging is the caller's decision; with no limit the store returns every row.
    assert DEFAULT_PAGE_LIMIT > 0
    with store.unit_of_work(write=False) as repo:
        assert len(repo.list_bindings(ListQuery())) == 75


BAD_FIELDS = ["nope", "router", "__table__", "port; DROP TABLE routers", "Port", "", "x" * 10_000]


@pytest.mark.parametrize("field", BAD_FIELDS)
@pytest.mark.parametrize("where", ["filter", "sort_key"])
def test_unknown_field_is_invalid_input(store: Store, data: Data, field: str, where: str) -> None:
    query = (
        ListQuery(filters={field: ("x",)}) if where == "filter" else ListQuery(sort=((field, ASC),))
    )
    for list_items in ("list_routers", "list_bindings"):
        with store.unit_of_work(write=False) as repo, pytest.raises(InvalidInput) as info:
            getattr(repo, list_items)(query)
        assert info.value.field == where
        message = str(info.value)
        assert len(message) <= 400
        assert message.isprintable()


def test_every_documented_field_can_filter_and_sort(store: Store, data: Data) -> None:
    sample_router, sample_binding = data.routers[0], data.bindings[0]
    with store.unit_of_work(write=False) as repo:
        for field in ROUTER_FIELDS:
            value: Any = getattr(sample_router, field)
            assert sample_router in repo.list_routers(
                ListQuery(filters={field: (value,)}, sort=((field, DESC),))
            )
        for field in BINDING_FIELDS:
            value = getattr(sample_binding, field)
            assert sample_binding in repo.list_bindings(
                ListQuery(filters={field: (value,)}, sort=((field, DESC),))
            )


@pytest.mark.parametrize("marker", [str(uuid.UUID(int=5)), "not-an-id", "", "x\n" * 5_000])
def test_unknown_marker_is_invalid_input(store: Store, data: Data, marker: str) -> None:
    for list_items in ("list_routers", "list_bindings"):
        with store.unit_of_work(write=False) as repo, pytest.raises(InvalidInput) as info:
            getattr(repo, list_items)(ListQuery(limit=5, marker=marker))
        assert info.value.field == "marker"
        message = str(info.value)
        assert len(message) <= 300, message[:200]
        assert message.isprintable(), repr(message[:200])


def test_marker_of_another_kind_is_invalid_input(store: Store, data: Data) -> None:
    with store.unit_of_work(write=False) as repo, pytest.raises(InvalidInput):
        repo.list_routers(ListQuery(limit=5, marker=data.bindings[0].id))


def test_marker_from_another_routers_bindings_is_invalid_input(store: Store, data: Data) -> None:
    # Accepting it would let a caller probe binding ids of routers (and projects) it cannot see.
    foreign = next(b for b in data.bindings if b.router_id == data.routers[0].id)
    with store.unit_of_work(write=False) as repo, pytest.raises(InvalidInput):
        repo.list_bindings(ListQuery(limit=5, marker=foreign.id), router_id=data.routers[1].id)


def test_marker_outside_the_scope_is_unknown_whatever_the_filters(store: Store, data: Data) -> None:
    # The scope (the caller's project) bounds the marker; filters do not (issue 10, item 1).
    theirs = next(r for r in data.routers if r.project_id == "p2")
    mine = next(r for r in data.routers if r.project_id == "p1")
    scope: dict[str, tuple[object, ...]] = {"project_id": ("p1",)}
    every_filter: tuple[dict[str, tuple[object, ...]], ...] = ({}, {"project_id": ("p2",)})
    with store.unit_of_work(write=False) as repo:
        for filters in every_filter:
            with pytest.raises(MarkerNotFound):
                repo.list_routers(ListQuery(scope=scope, filters=filters, marker=theirs.id))
        after = repo.list_routers(ListQuery(scope=scope, marker=mine.id, sort=(("id", ASC),)))
        repo.list_routers(ListQuery(marker=theirs.id))  # no scope (an admin's): it pages
    assert [r.id for r in after] == sorted(
        r.id for r in data.routers if r.id > mine.id and r.project_id == "p1"
    )
