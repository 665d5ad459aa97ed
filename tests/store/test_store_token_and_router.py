"""A write's token and the router its route reads first, in one statement
(Repository.lookup_token with router_id): the router read is the one the route would have
made, and never stands in for a read after the router was changed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cthm.domain import Role, Router, RouterNotFound
from cthm.store import Store

UNKNOWN_ROUTER = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def secret(store: Store) -> str:
    with store.unit_of_work() as repo:
        _, issued = repo.tokens.create(project_id="p", roles=[Role("member")])
    return issued


def test_the_router_read_with_the_token_is_the_stored_one(
    store: Store, secret: str, make_router: Callable[..., Router]
) -> None:
    router = make_router(name="r1", project_id="p")
    with store.unit_of_work() as repo:
        token = repo.lookup_token(secret, router_id=router.id)
        assert token is not None
        assert token.project_id == "p"
        assert repo.router_project(router.id) == "p"
        assert repo.get_router(router.id) == router
        assert repo.get_router(router.id) == router  # read again: from the database


def test_no_router_is_not_found(store: Store, secret: str) -> None:
    with store.unit_of_work() as repo:
        assert repo.lookup_token(secret, router_id=UNKNOWN_ROUTER) is not None
        assert repo.router_project(UNKNOWN_ROUTER) is None
        with pytest.raises(RouterNotFound):
            repo.get_router(UNKNOWN_ROUTER)
    with store.unit_of_work() as repo:
        assert repo.lookup_token(secret, router_id="not-a-uuid") is not None


def test_an_unknown_token_reads_nothing_for_later(
    store: Store, make_router: Callable[..., Router]
) -> None:
    router = make_router(name="r1", project_id="p")
    with store.unit_of_work() as repo:
        assert repo.lookup_token("cthm_" + "x" * 43, router_id=router.id) is None
        assert repo.get_router(router.id) == router


def test_a_router_changed_after_is_read_as_changed(
    store: Store, secret: str, make_router: Callable[..., Router]
) -> None:
    router = make_router(name="r1", project_id="p")
    with store.unit_of_work() as repo:
        repo.lookup_token(secret, router_id=router.id)
        repo.update_router(router.id, name="renamed")
        assert repo.get_router(router.id).name == "renamed"
    with store.unit_of_work() as repo:
        repo.lookup_token(secret, router_id=router.id)
        repo.delete_router(router.id)
        with pytest.raises(RouterNotFound):
            repo.get_router(router.id)
