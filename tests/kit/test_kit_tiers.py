"""The tiers' markers are set on every test that needs them, however it reaches the namespace
fixture, a cthm process or a database: a pytest run over a small suite shows what each tier
selects."""

from __future__ import annotations

import pytest

CONFTEST = """
import pytest

from cthm.store import Store
from support.tiers import mark_tiers


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    mark_tiers(items)


@pytest.fixture
def netns():
    yield "never a real namespace here: the tests only collect"


@pytest.fixture
def topology(netns):
    return netns


@pytest.fixture
def world(topology):
    return topology


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    return Store("sqlite://").url if request.param == "sqlite" else "postgresql://"
"""

SUITE = """
import functools

import pytest
from hypothesis import given, strategies as st

from cthm.store import Store
from cthm.testing import FakeHost, NamespaceFactory, PostgresCluster, ServerProcess
from cthm.testing.service import CTHM


def start_server(path):
    return ServerProcess(path, path)


def run(*args):
    return [str(CTHM), *args]


class Harness:
    def serve(self, path):
        return start_server(path)


def make_namespaces():
    return NamespaceFactory()


class Target:
    def __init__(self, path):
        self.store = Store(path)


TARGET = Target("sqlite://")


@pytest.fixture
def store(tmp_path):
    made = Store(f"sqlite:///{tmp_path}/cthm.db")
    yield made


@pytest.fixture
def served(tmp_path):
    return start_server(tmp_path)


@pytest.fixture
def cli():
    return functools.partial(run, "--json")


def test_pure():
    assert sum([1, 2]) == 3


def test_annotation_only(factory: NamespaceFactory | None = None):
    assert factory is None


def test_netns(netns):
    pass


def test_fixture_on_netns(world):
    pass


def test_builds_namespaces():
    make_namespaces()


def test_fake_host(tmp_path):
    with FakeHost("a", tmp_path):
        pass


def test_server_through_helper(tmp_path):
    start_server(tmp_path)


def test_server_fixture(served):
    pass


def test_cli_partial(cli):
    pass


def test_server_in_a_class_helper(tmp_path):
    Harness().serve(tmp_path)


def test_lambda_runs_cli():
    call = lambda: run("router", "list")  # noqa: E731
    assert call


@given(st.integers())
def test_hypothesis_server(value):
    start_server(value)


def test_store_fixture(store):
    pass


def test_store_of_a_module_level_object():
    assert TARGET.store


def test_store_in_a_comprehension(tmp_path):
    assert [Store(f"sqlite:///{tmp_path}/{n}.db") for n in range(2)]


def test_on_both_databases(database_url):
    pass


def test_own_cluster(tmp_path):
    PostgresCluster(tmp_path).start()


@pytest.mark.kernel
def test_marked_by_hand():
    pass


class TestGrouped:
    def test_pure_method(self):
        pass

    def test_netns_method(self, netns):
        pass
"""

PURE = {"test_pure", "test_annotation_only", "TestGrouped::test_pure_method"}
KERNEL = {
    "test_netns",
    "test_fixture_on_netns",
    "test_builds_namespaces",
    "test_fake_host",
    "test_marked_by_hand",
    "TestGrouped::test_netns_method",
}
DATABASE = {
    "test_store_fixture",
    "test_store_in_a_comprehension",
    "test_store_of_a_module_level_object",
    "test_on_both_databases[sqlite]",
    "test_on_both_databases[postgresql]",
    "test_own_cluster",
}
POSTGRES = {"test_on_both_databases[postgresql]", "test_own_cluster"}
SERVER = {
    "test_server_through_helper",
    "test_server_fixture",
    "test_cli_partial",
    "test_server_in_a_class_helper",
    "test_lambda_runs_cli",
    "test_hypothesis_server",
}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_sample=SUITE)
    pytester.makeini("[pytest]\nmarkers =\n    kernel\n    server\n    database\n    postgres\n")
    return pytester


def test_unit_tier_has_only_pure_tests(suite: pytest.Pytester) -> None:
    unit = "not kernel and not server and not database"
    run = suite.runpytest_inprocess("--collect-only", "-q", "--strict-markers", "-m", unit)
    assert run.ret == 0, run.outlines
    assert {line.split("::", 1)[1] for line in run.outlines if "::" in line} == PURE


def test_markers_reach_namespaces_processes_and_databases_however_used(
    suite: pytest.Pytester,
) -> None:
    items, _ = suite.inline_genitems("--strict-markers")
    markers = {
        item.nodeid.split("::", 1)[1]: {mark.name for mark in item.iter_markers()} for item in items
    }
    assert {name for name, marks in markers.items() if "kernel" in marks} == KERNEL
    assert {name for name, marks in markers.items() if "server" in marks} == SERVER
    assert {name for name, marks in markers.items() if "database" in marks} == DATABASE
    assert {name for name, marks in markers.items() if "postgres" in marks} == POSTGRES
    assert {name for name, marks in markers.items() if not marks} == PURE
