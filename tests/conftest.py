"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest

from cthm.testing import NamespaceFactory
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
    """Marks `kernel` and `server` on every test that needs them (support/tiers.py)."""
    mark_tiers(items)


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
