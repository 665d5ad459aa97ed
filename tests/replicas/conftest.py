"""Fixtures of the replica suite: API replicas (`cthm serve --no-agent`, each on its own data
directory) on one PostgreSQL database of a throwaway cluster this suite owns, so that it may
stop, restart and kill it (never a shared or existing server: CTHM_TEST_DATABASE_URL is not
used here). Everything is stopped by pid: the replicas at the end of each test, the cluster at
the end of the session, its directory removed."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cthm.testing.postgres import PostgresCluster
from replicas.fleet import Replicas
from support.databases import require_cluster

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster for this suite alone, started once per worker; tests that stop it start it
    again (see `cluster`)."""
    require_cluster()
    base = Path(tempfile.mkdtemp(prefix="cthm-replicas-"))
    made = PostgresCluster(base)
    try:
        made.start()
        yield made
    finally:
        made.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cluster(own_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The suite's cluster, running when the test starts and when it ends."""
    own_cluster.start()  # a no-op when running
    yield own_cluster
    own_cluster.start()


@pytest.fixture
def replicas(cluster: PostgresCluster, tmp_path: Path) -> Iterator[Replicas]:
    """Replicas on a new database of the suite's cluster, killed (by pid) at the end."""
    url = cluster.create_database(f"replicas_{os.getpid()}_{next(_databases)}")
    made = Replicas(tmp_path, url)
    try:
        yield made
    finally:
        made.close()
