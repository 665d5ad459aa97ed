"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cthm.store import Store
from cthm.testing import NamespaceFactory
from support.databases import DATABASES, PostgresServer, TestDatabases, kind_of, start_server
from support.namespace_names import Names
from support.stdlib_bindings import restore_stdlib_bindings
from support.tiers import mark_tiers

pytest_plugins = ("pytester",)  # tests/kit runs small suites in-process


# Test ids must not depend on values made at import time (uuid4s, object addresses): the
# parallel workers of `make test` must collect the same tests, and a failing test's id must
# name the same test in the next run.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    if isinstance(val, str) and _UUID.search(val):
        return _UUID.sub("UUID", val)
    if " at 0x" in repr(val):
        return f"{argname}-{type(val).__name__}"
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks `kernel`, `server`, `database` and `postgres` on every test that needs them
    (support/tiers.py)."""
    mark_tiers(items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Importing Neutron (tests/neutron, collected by every worker) rebinds `http.server` to
    eventlet's green copy: support/stdlib_bindings.py."""
    restore_stdlib_bindings()


def _kernel_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture
def netns() -> Iterator[NamespaceFactory]:
    """A factory of network namespaces deleted (exactly those) when the test ends, pass or fail."""
    reason = _kernel_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"kernel tests cannot run in CI: {reason}")
        pytest.skip(reason)
    factory = NamespaceFactory()
    try:
        yield factory
    finally:
        leftovers = factory.cleanup()
        assert not leftovers, f"could not delete namespaces {leftovers}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Callable[[], PostgresServer]]:
    """This worker's PostgreSQL, started by the first call (a worker that runs no PostgreSQL
    test starts none) and stopped by its pid when the session ends, whatever the outcome."""
    started: list[PostgresServer] = []

    def get() -> PostgresServer:
        if not started:
            started.append(start_server())
        return started[0]

    try:
        yield get
    finally:
        for server in started:
            server.close()


@pytest.fixture
def test_databases(
    tmp_path: Path, postgres_server: Callable[[], PostgresServer]
) -> Iterator[TestDatabases]:
    databases = TestDatabases(tmp_path, postgres_server)
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture(params=DATABASES, ids=DATABASES)
def database_url(request: pytest.FixtureRequest, test_databases: TestDatabases) -> str:
    """A database of the test's own, on SQLite and on PostgreSQL (migrated already; the file
    of SQLite's is made by the first migrate(), as in production). Restrict a test to SQLite
    with support.databases.sqlite_only."""
    return test_databases.new(request.param)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store on `database_url` (each database), closed after the test."""
    store = Store(database_url)
    store.migrate()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def new_database_url(database_url: str, test_databases: TestDatabases) -> Callable[[], str]:
    """More databases of the kind `database_url` is (each API of a test its own)."""
    return lambda: test_databases.new(kind_of(database_url))


@pytest.fixture
def names(netns: NamespaceFactory) -> Iterator[Names]:
    """Extra names under /run/netns (bind mounts, symlinks), removed before the namespaces."""
    made = Names(netns)
    try:
        yield made
    finally:
        made.cleanup()  # before the namespaces themselves go (fixture order)
