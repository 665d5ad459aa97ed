"""Test tiers: the `kernel`, `server`, `database` and `postgres` markers, set at collection on
every test that needs them, so `make unit` (pure and fake-backed tests: none of these markers
and not `traffic`) never runs one by accident and no test has to remember a marker.

- `kernel`: the test uses the `netns` fixture, directly or through fixtures that depend on it,
  or builds a NamespaceFactory or a FakeHost (a mount namespace of its own) itself.
- `server`: the test starts a real cthm process: a `ServerProcess`, or the `cthm` console
  script (`cthm serve`, or a CLI command run as the user runs it).
- `database`: the test opens a real database: a Store (alone, behind the API or the
  agent), or the CLI's Service, which opens one, or a PostgreSQL cluster.
- `postgres`: the test runs on PostgreSQL: the `postgresql` case of the `database_url`
  fixture, or a PostgresCluster of its own (`-m "not postgres"`: SQLite only).

What a test "uses" is read from its code and that of its fixtures: the global names they
refer to, followed into the suite's own helper functions and classes (a bounded walk), until
one of those objects is found. A module-wide `pytestmark` still works as before.
"""

from __future__ import annotations

import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

import cthm
from cthm.testing.hosts import FakeHost
from cthm.testing.netns import NamespaceFactory
from cthm.testing.postgres import PostgresCluster
from cthm.testing.service import CTHM, ServerProcess

NOT_SUITE_CODE = tuple(
    Path(p).resolve() for p in {cthm.__path__[0], sys.prefix, sys.base_prefix, sys.exec_prefix}
)
"""Where the code the walk does not follow lives (the product, the stdlib, the venv)."""
NAMESPACE_FIXTURES = frozenset({"netns"})
"""Fixtures that create network namespaces; every fixture depending on one is covered too."""

MAX_DEPTH = 4
"""How far to follow helper calls: a test -> its helper -> that helper's helper ..."""

KERNEL_OBJECTS: tuple[object, ...] = (NamespaceFactory, FakeHost)
SERVER_OBJECTS: tuple[object, ...] = (ServerProcess, CTHM)
POSTGRES_OBJECTS: tuple[object, ...] = (PostgresCluster,)
POSTGRES_PARAMETER = ("database_url", "postgresql")
"""(fixture, parameter) of the PostgreSQL case of tests/conftest.py's `database_url`."""
DATABASE_CLASSES = (("cthm.store", "Store"), ("cthm.cli.service", "Service"))
"""(module, class) opening a real database; named, not imported, so that a broken import there
fails only the tests that use it, not the collection of the whole suite."""


def mark_tiers(items: Iterable[pytest.Item]) -> None:
    """Adds `kernel`, `server`, `database` and `postgres` to the items that need them
    (collection hook)."""
    kernel = _Finder(lambda obj: any(obj is target for target in KERNEL_OBJECTS))
    server = _Finder(lambda obj: any(obj is target for target in SERVER_OBJECTS))
    database = _Finder(_opens_a_database)
    postgres = _Finder(lambda obj: any(obj is target for target in POSTGRES_OBJECTS))
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        code = list(_code_of(item))
        if names & NAMESPACE_FIXTURES or any(kernel.uses(obj) for obj in code):
            item.add_marker(pytest.mark.kernel)
        if any(server.uses(obj) for obj in code):
            item.add_marker(pytest.mark.server)
        on_postgres = _parametrized_with(item, *POSTGRES_PARAMETER) or any(
            postgres.uses(obj) for obj in code
        )
        if on_postgres:
            item.add_marker(pytest.mark.postgres)
        if on_postgres or any(database.uses(obj) for obj in code):
            item.add_marker(pytest.mark.database)


def _parametrized_with(item: pytest.Item, name: str, value: object) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get(name, object()) == value


def _opens_a_database(obj: object) -> bool:
    if not isinstance(obj, type):
        return False
    module = obj.__module__
    return any(
        obj.__name__ == name and (module == package or module.startswith(package + "."))
        for package, name in DATABASE_CLASSES
    )


def _code_of(item: pytest.Item) -> Iterator[object]:
    """The test function and the functions of every fixture it uses, directly or not."""
    function = getattr(item, "function", None)
    if function is not None:
        yield function
    info = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        for definition in definitions:
            yield definition.func


class _Finder:
    """Answers "does this code reach a target?", remembering every answer."""

    def __init__(self, is_target: Callable[[object], bool]) -> None:
        self._is_target = is_target
        self._known: dict[int, bool] = {}

    def uses(self, obj: object, depth: int = 0) -> bool:
        if self._is_target(obj):
            return True
        if depth > MAX_DEPTH or not _is_suite_code(obj):
            return False
        key = id(obj)
        if key not in self._known:
            self._known[key] = False  # a cycle (recursion, mutual helpers) ends here
            self._known[key] = any(self.uses(ref, depth + 1) for ref in _references(obj))
        return self._known[key]


def _is_suite_code(obj: object) -> bool:
    """A function or class of this test suite (not of cthm, the stdlib or a library)."""
    obj = _unwrapped(obj)
    if isinstance(obj, functools.partial):
        return True
    if isinstance(obj, types.FunctionType):
        return _in_tests(obj.__code__.co_filename)
    if isinstance(obj, type):
        module = sys.modules.get(obj.__module__)
        return _in_tests(getattr(module, "__file__", None))
    # An instance of the suite's own class (a module-level target object): its class's code.
    return not isinstance(obj, types.ModuleType) and _is_suite_code(type(obj))


@functools.cache  # one answer per file: resolving paths is most of the walk's cost
def _in_tests(filename: str | None) -> bool:
    """Not cthm itself, the standard library or an installed package: a test's own code."""
    if filename is None or filename.startswith("<"):
        return False
    path = Path(filename).resolve()
    return not any(path.is_relative_to(outside) for outside in NOT_SUITE_CODE)


def _references(obj: object) -> Iterator[object]:
    """The objects `obj`'s code names: globals it reads, what a partial binds, class members,
    an instance's class."""
    obj = _unwrapped(obj)
    if isinstance(obj, functools.partial):
        yield obj.func
        yield from obj.args
        yield from obj.keywords.values()
    elif isinstance(obj, types.FunctionType):
        namespace = obj.__globals__
        for name in _names(obj.__code__):
            if name in namespace:
                yield namespace[name]
    elif isinstance(obj, type):
        for member in vars(obj).values():
            if isinstance(member, staticmethod | classmethod):
                yield member.__func__
            elif isinstance(member, property):
                yield from (f for f in (member.fget, member.fset) if f is not None)
            elif isinstance(member, types.FunctionType):
                yield member
    else:
        yield type(obj)


def _names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names of a code object and of the code nested in it."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _unwrapped(obj: object) -> object:
    """The test's own function under decorators (functools.wraps, hypothesis' @given)."""
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", None)
    if callable(inner):
        obj = inner
    if callable(obj):
        try:
            return inspect.unwrap(obj)
        except ValueError:  # a __wrapped__ cycle: keep the outer object
            return obj
    return obj
