"""Fixtures of the multi-host suite: a real `cthm serve --no-agent`, fake hosts running
`cthm agent run` with tokens limited to them, and real router namespaces (the `netns` factory:
unique prefix, deleted by exact name). Everything is stopped by pid, hosts before the API,
the API before the namespaces (the `netns` fixture is torn down after this one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cthm.testing import NamespaceFactory
from hosts.cluster import Cluster


@pytest.fixture
def cluster(netns: NamespaceFactory, tmp_path: Path) -> Iterator[Cluster]:
    """A Cluster: call start_server() (its down time), add_host(), start_agent(), place()."""
    made = Cluster(tmp_path, netns)
    try:
        yield made
    finally:
        made.close()
