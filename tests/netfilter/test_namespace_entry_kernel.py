"""Entering a namespace again after a visit, the name changed meanwhile (libnftables.py,
netns.py). The runner caches a context per namespace and the identities of the host's and its
own namespace (read once): neither cache may lead a write anywhere but where the name leads
now. These tests change the name between two calls (deleted, made again, bound to another
namespace, a symlink swapped in, the host's or cthm's own namespace bound in) and check where
the second call's writes land, read independently with nft: the name's current namespace
(checked afresh) or a refusal. Names carry the test's prefix; binds and links are removed by
exact path.
"""

from __future__ import annotations

import os
import sys

import pytest

from cthm.netfilter import LibNftablesRunner, NamespaceNotFound
from cthm.netfilter.netns import NETNS_DIR, UnsafeNamespace
from cthm.testing import NamespaceFactory, run_in_namespace
from support.namespace_names import Names

pytestmark = pytest.mark.kernel

ADD_TABLE = "add table inet cthmentry\n"
NSFS_DEV = os.stat("/proc/self/ns/net").st_dev  # every namespace's inode lives there


def has_table(namespace: str) -> bool:
    """Whether `table inet cthmentry` is in the namespace, read with nft, not the runner."""
    listed = run_in_namespace(namespace, ["nft", "list", "tables"]).stdout
    return "table inet cthmentry" in listed


def descriptors_of(namespace: str) -> int:
    """How many of this process's descriptors are the namespace's nsfs inode."""
    return descriptors_of_inode(os.stat(NETNS_DIR / namespace).st_ino)


def descriptors_of_inode(inode: int) -> int:
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            info = os.stat(f"/proc/self/fd/{entry}")  # what the descriptor is open on
        except OSError:  # the listing's own descriptor, closed meanwhile
            continue
        count += info.st_ino == inode and info.st_dev == NSFS_DEV
    return count


def test_a_name_deleted_and_made_again_is_the_new_namespace(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    router = netns.create("again")
    lib.run(router, "list tables")
    old_inode = os.stat(NETNS_DIR / router).st_ino
    netns.delete(router)
    assert netns.create("again") == router
    lib.run(router, ADD_TABLE)
    assert has_table(router)  # the namespace the name is now
    assert descriptors_of_inode(old_inode) == 0  # nothing holds the old one
    assert [key[0] for key in lib.cached_contexts()] == [router]


def test_a_name_deleted_is_not_found(lib: LibNftablesRunner, netns: NamespaceFactory) -> None:
    router = netns.create("gone")
    lib.run(router, "list tables")
    inode = os.stat(NETNS_DIR / router).st_ino
    netns.delete(router)
    with pytest.raises(NamespaceNotFound):
        lib.run(router, ADD_TABLE)
    assert descriptors_of_inode(inode) == 0  # nothing keeps the deleted namespace alive
    assert lib.cached_contexts() == []


def test_a_name_bound_to_another_namespace_writes_there(
    lib: LibNftablesRunner, netns: NamespaceFactory, names: Names
) -> None:
    first, second = netns.create("first"), netns.create("second")
    name = names.bind("moved", NETNS_DIR / first)
    lib.run(name, "list tables")
    names.remove(name)
    assert names.bind("moved", NETNS_DIR / second) == name
    lib.run(name, ADD_TABLE)
    assert has_table(second)
    assert not has_table(first)  # never the context of the first visit


def test_a_symlink_swapped_in_is_refused(
    lib: LibNftablesRunner, netns: NamespaceFactory, names: Names
) -> None:
    first, second = netns.create("first"), netns.create("second")
    name = names.bind("swapped", NETNS_DIR / first)
    lib.run(name, "list tables")
    names.remove(name)
    assert names.symlink("swapped", NETNS_DIR / second) == name
    with pytest.raises(UnsafeNamespace, match="symbolic link"):
        lib.run(name, ADD_TABLE)
    assert not has_table(first)
    assert not has_table(second)
    assert descriptors_of(first) == 0  # nothing of the stale context holds it


def test_the_hosts_namespace_bound_after_a_visit_is_refused(
    lib: LibNftablesRunner, netns: NamespaceFactory, names: Names
) -> None:
    router = netns.create("router")
    name = names.bind("host", NETNS_DIR / router)
    lib.run(name, "list tables")
    names.remove(name)
    # The namespace this test runs in; a read-only command: were the check missing, nothing
    # would be written to it.
    assert names.bind("host", "/proc/self/ns/net") == name
    for _ in range(2):  # the special identities are read once: refused every time
        with pytest.raises(UnsafeNamespace, match="host's initial network namespace"):
            lib.run(name, "list tables")


def test_cthms_own_namespace_is_refused_every_time(netns: NamespaceFactory) -> None:
    """A process running inside a namespace never enters it by its /run/netns name (its own
    namespace, read once and kept: the refusal holds on every later call too)."""
    router = netns.create("own")
    script = (
        "import sys\n"
        "from cthm.netfilter import LibNftablesRunner\n"
        "from cthm.netfilter.netns import UnsafeNamespace, namespace_identity\n"
        "name = sys.argv[1]\n"
        "runner = LibNftablesRunner()\n"
        "calls = (lambda: namespace_identity(name), lambda: runner.run(name, 'list tables'))\n"
        "for attempt in range(2):\n"
        "    for call in calls:\n"
        "        try:\n"
        "            call()\n"
        "        except UnsafeNamespace as exc:\n"
        '            assert "cthm\'s own network namespace" in str(exc), exc\n'
        "        else:\n"
        "            raise SystemExit(f'entered its own namespace, attempt {attempt}')\n"
        "runner.close()\n"
        "print('refused')\n"
    )
    done = run_in_namespace(router, [sys.executable, "-c", script, router], check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"
