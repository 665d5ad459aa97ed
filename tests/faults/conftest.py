"""Fixtures of the fault-injection suite: real `cthm serve` processes on tmp data dirs
(always stopped, by pid), and per-test counts appended to $CTHM_FAULT_REPORT."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cthm.testing.service import ServerProcess
from support.faults import ServerFactory, report_counts


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """make_server(*args, env=...) -> a started server; each on its own data dir."""
    servers: list[ServerProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        index = len(servers)
        server = ServerProcess(
            tmp_path / f"data{index}", tmp_path / f"logs{index}", args=args, env=env
        )
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.process is not None:
            server.kill()


@pytest.fixture
def counts(request: pytest.FixtureRequest) -> Iterator[Counter[str]]:
    """The test's counts (faults injected, writes acknowledged, ...), reported at teardown."""
    found: Counter[str] = Counter()
    yield found
    report_counts(request.node.nodeid, dict(found))
