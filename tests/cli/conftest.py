"""One real `cthm serve` per test module, and the real `cthm` command pointed at it, holding the
admin token the server wrote into its data directory."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator

import pytest
from cthm_cli_harness import Result, ServerProcess, run, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("cthm-serve")
    with serving(ServerProcess(base / "data", base / "logs")) as process:
        yield process


@pytest.fixture
def cthm(server: ServerProcess) -> Callable[..., Result]:
    """Runs `cthm ARGS...` with CTHM_URL set to the module's server, as its admin (CTHM_TOKEN)."""
    return functools.partial(run, url=server.url, token=server.admin_token)


@pytest.fixture
def project() -> str:
    """A project id of this test alone, so lists filtered by it see only this test's routers."""
    return f"p-{uuid.uuid4().hex[:12]}"
