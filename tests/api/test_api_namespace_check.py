"""Registration's namespace check is a port (domain.NamespaceCheck) the API is given.

The API never looks at /run/netns itself (it may run on another host than the namespaces):
`cthm serve` gives it the agent's check only when its agent runs in the same process. A
refusal is a 409 that stores nothing; without a check any valid name is registered and the
agent that applies the router decides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from cthm.cli.service import Service
from cthm.domain import NamespaceRefused, Router
from cthm.settings import load_settings
from cthm.testing import NamespaceFactory

from .support import ApiFactory, TestClient, error_of, issue_token

NETNS_DIR = Path("/run/netns")


class RefusingCheck:
    """Refuses `taken`, naming the first router it is shown; records what it was shown."""

    def __init__(self, taken: str) -> None:
        self.taken = taken
        self.shown: list[list[str]] = []

    def __call__(self, namespace: str, routers: Callable[[], Iterable[Router]]) -> None:
        if namespace != self.taken:
            return
        known = list(routers())
        self.shown.append(sorted(r.namespace for r in known))
        holder = known[0]
        raise NamespaceRefused(
            namespace, f"it is the same kernel namespace as router {holder.id}'s", holder.id
        )


def test_a_refused_namespace_is_a_409_and_nothing_is_stored(api_factory: ApiFactory) -> None:
    check = RefusingCheck("qrouter-taken")
    api = api_factory(namespace_check=check)
    api.create_router(name="a", project_id="p1", namespace="qrouter-a")
    api.create_router(name="b", project_id="p2", namespace="qrouter-b")
    before = api.snapshot()

    response = api.post(
        "/v2.0/routers",
        json={"router": {"name": "c", "project_id": "p3", "namespace": "qrouter-taken"}},
    )

    assert response.status_code == 409, response.text
    error = error_of(response)
    assert error["type"] == "Conflict"
    assert error["message"].startswith("Namespace qrouter-taken refused: ")
    assert api.snapshot() == before
    # The check compares with every project's routers, not only the caller's.
    assert check.shown == [["qrouter-a", "qrouter-b"]]
    # Any other name is the check's to pass.
    api.create_router(name="d", project_id="p3", namespace="qrouter-d")


def test_without_a_check_any_valid_namespace_is_registered(api_factory: ApiFactory) -> None:
    api = api_factory()  # as with `cthm serve --no-agent`, or an API on another host
    created = api.create_router(name="a", project_id="p1", namespace="qrouter-anything")
    assert created["namespace"] == "qrouter-anything"


@pytest.fixture
def symlink(netns: NamespaceFactory, tmp_path: Path) -> Iterator[str]:
    """A name under /run/netns (the test's prefix) that is a symlink: the agent refuses it.
    It points to nothing at all; removed by exact path."""
    name = netns.name("nscheck-sym")
    path = NETNS_DIR / name
    path.symlink_to(tmp_path / "nothing")
    try:
        yield name
    finally:
        if path.is_symlink():
            path.unlink()


@pytest.mark.kernel
@pytest.mark.parametrize(("agent_enabled", "status"), [(True, 409), (False, 201)])
def test_serve_gives_the_check_only_with_its_agent(
    tmp_path: Path, symlink: str, agent_enabled: bool, status: int
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", agent_enabled=agent_enabled, sweep_orphans=False
    )
    with Service(settings, say=lambda _: None) as service:
        token = issue_token(service.store, "admin", ["admin"])
        with TestClient(service.app()) as client:
            response = client.post(
                "/v2.0/routers",
                json={"router": {"name": "s", "project_id": "p1", "namespace": symlink}},
                headers={"X-Auth-Token": token},
            )
    assert response.status_code == status, response.text
    if status == 409:
        assert "symbolic link" in error_of(response)["message"]
