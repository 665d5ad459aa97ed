"""NamespaceClaims skips the full namespace check while a name is still the inode it accepted,
and looks again in full as soon as the name is anything else: gone, a symlink (to the host's
namespace too), a plain file, or another namespace under the same name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cthm.agent.claims import NamespaceClaims
from cthm.domain import new_router
from cthm.netfilter import UnsafeNamespace, namespace_identity
from cthm.testing import NamespaceFactory

pytestmark = pytest.mark.kernel

NETNS_DIR = Path("/run/netns")


@pytest.fixture
def made(netns: NamespaceFactory) -> Iterator[list[Path]]:
    """Symlinks and files the test puts under /run/netns (its prefix), removed exactly."""
    paths: list[Path] = []
    try:
        yield paths
    finally:
        for path in paths:
            if path.is_symlink() or (path.is_file() and not path.is_mount()):
                path.unlink()


def test_a_name_that_changes_is_checked_again_in_full(
    netns: NamespaceFactory, made: list[Path]
) -> None:
    claims = NamespaceClaims()
    name = netns.create("a")
    router = new_router(name="r", project_id="p", namespace=name)
    first = claims.note(router)
    assert first is not None
    assert first == namespace_identity(name)
    assert claims.note(router) == first  # the inode accepted: unchanged
    assert claims.holder(router) is None

    # Another namespace under the same name (one made first may take the freed inode; the
    # kernel may also give it back: the identity is then the same, rightly).
    netns.delete(name)
    assert claims.note(router) is None
    netns.create("b")
    assert netns.create("a") == name
    assert claims.note(router) == namespace_identity(name)

    # A symlink, even to the host's namespace, is refused, never taken for the inode it names.
    netns.delete(name)
    path = NETNS_DIR / name
    made.append(path)
    path.symlink_to("/proc/1/ns/net")
    with pytest.raises(UnsafeNamespace, match="symbolic link"):
        claims.note(router)
    with pytest.raises(UnsafeNamespace, match="symbolic link"):
        claims.holder(router)

    # A plain file (as `ip netns add` leaves it before its mount): not a namespace yet.
    path.unlink()
    path.touch()
    assert claims.note(router) is None
    path.unlink()
    made.remove(path)  # the namespace's own file from here: the netns fixture removes it
    assert netns.create("a") == name
    assert claims.note(router) == namespace_identity(name)
