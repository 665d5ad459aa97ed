"""The registration-time namespace check the agent gives the API (cthm.agent.check_namespace).

Run against a directory of the test's own instead of /run/netns: symlinks and files there
need no privilege; the bind mounts of the kernel test are made in tmp_path and unmounted by
exact path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from cthm.agent import check_namespace
from cthm.domain import NamespaceRefused, Router, new_router
from cthm.testing import NamespaceFactory

NETNS_DIR = Path("/run/netns")


class Routers:
    """The routers given to the check, counting how often it reads them."""

    def __init__(self, *routers: Router) -> None:
        self.routers = routers
        self.reads = 0

    def __call__(self) -> Iterable[Router]:
        self.reads += 1
        return self.routers


def test_an_absent_namespace_passes_without_reading_the_routers(tmp_path: Path) -> None:
    routers = Routers(new_router(name="a", project_id="p", namespace="qrouter-a"))
    check_namespace("qrouter-later", routers, tmp_path)
    assert routers.reads == 0


def test_a_file_that_is_not_a_namespace_yet_passes(tmp_path: Path) -> None:
    (tmp_path / "qrouter-half").touch()  # as `ip netns add` leaves it for a moment
    routers = Routers()
    check_namespace("qrouter-half", routers, tmp_path)
    assert routers.reads == 0


def test_a_symlink_is_refused_whatever_it_points_to(tmp_path: Path) -> None:
    (tmp_path / "qrouter-host").symlink_to("/proc/1/ns/net")
    (tmp_path / "qrouter-dangling").symlink_to(tmp_path / "nothing")
    for name in ("qrouter-host", "qrouter-dangling"):
        routers = Routers()
        with pytest.raises(NamespaceRefused) as refused:
            check_namespace(name, routers, tmp_path)
        assert refused.value.namespace == name
        assert refused.value.message.startswith(f"Namespace {name} refused: ")
        assert "symbolic link" in refused.value.message
        assert routers.reads == 0


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Bind mounts the test makes; unmounted by exact path, pass or fail."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        subprocess.run(["umount", str(path)], check=False, capture_output=True, timeout=10)


def bind(mounts: list[Path], source: Path, target: Path) -> None:
    target.touch(exist_ok=False)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True, timeout=10)
    mounts.append(target)


@pytest.mark.kernel
def test_a_second_name_of_a_routers_namespace_and_the_hosts_are_refused(
    tmp_path: Path, netns: NamespaceFactory, mounts: list[Path]
) -> None:
    namespace = netns.create("chk")
    bind(mounts, NETNS_DIR / namespace, tmp_path / "qrouter-first")
    bind(mounts, NETNS_DIR / namespace, tmp_path / "qrouter-second")
    bind(mounts, Path("/proc/self/ns/net"), tmp_path / "qrouter-own")
    other = netns.create("other")
    bind(mounts, NETNS_DIR / other, tmp_path / "qrouter-other")
    first = new_router(name="first", project_id="pa", namespace="qrouter-first")
    unrelated = new_router(name="other", project_id="pa", namespace="qrouter-other")
    gone = new_router(name="gone", project_id="pa", namespace="qrouter-gone")  # skipped

    with pytest.raises(NamespaceRefused) as refused:
        check_namespace("qrouter-second", Routers(gone, unrelated, first), tmp_path)
    assert refused.value.router_id == first.id
    assert "same kernel namespace" in refused.value.message
    assert f"namespace qrouter-first of router {first.id}" in refused.value.message

    # The router's own name, and a namespace nobody else has, pass.
    check_namespace("qrouter-first", Routers(gone, unrelated), tmp_path)
    check_namespace("qrouter-second", Routers(unrelated), tmp_path)

    # The test runs where cthm would: its own namespace is (here) the host's as well.
    with pytest.raises(NamespaceRefused) as own:
        check_namespace("qrouter-own", Routers(), tmp_path)
    assert "host's initial network namespace" in own.value.message or (
        "cthm's own network namespace" in own.value.message
    )
