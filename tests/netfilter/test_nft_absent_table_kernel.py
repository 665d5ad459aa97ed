"""A full sync of a namespace the kernel says has no cthm table applies render()'s text without
the add and delete that replace a table (netfilter/render.py `into_absent_table`), against the
real kernel: the table it makes is the desired one, marked with the owner; a table that is
there is still replaced; and a table that appears between the kernel's answer and the apply is
never taken for applied (the read-back differs, or nft refuses)."""

from __future__ import annotations

import pytest

from cthm.domain import Assignment, Protocol
from cthm.netfilter import LibNftablesRunner, NftablesBackend, NftError
from cthm.netfilter.render import into_absent_table, render
from cthm.testing import NamespaceFactory

from .conftest import nft

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000d"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]


class BlindProbe(LibNftablesRunner):
    """Says no namespace has the table: as if it appeared right after the kernel was asked."""

    def table_exists(self, namespace: str, table: str) -> bool | None:
        return False


def test_the_text_for_an_absent_table_only_drops_the_replacing_head() -> None:
    text = str(render(FTP, OWNER))
    fresh = into_absent_table(text)
    assert text.endswith(fresh)
    assert fresh.startswith(f'add table inet cthm {{ comment "cthm:{OWNER}"; }}\n')
    assert "delete table" not in fresh
    assert into_absent_table(fresh) == fresh  # nothing more to drop


def test_a_sync_of_a_namespace_without_the_table_makes_the_desired_one(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    namespace = netns.create("absent")
    backend = NftablesBackend(lib, owner=OWNER)
    want = backend.desired(FTP)
    assert backend.sync(namespace, FTP, want) == (None, want)
    reader = NftablesBackend(LibNftablesRunner(), owner=OWNER)
    try:
        assert reader.read(namespace) == want  # owner included (the table's comment)
        # A table that is there (with a port too many, by hand) is replaced, not added to.
        nft(namespace, "add", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 8021 }")
        before, after = backend.sync(namespace, FTP, want)
        assert before is not None
        assert Assignment(TCP, 8021, "ftp") in before.assignments
        assert after == want
        assert reader.read(namespace) == want
    finally:
        reader.close()


def test_a_table_that_appeared_after_the_probe_is_never_taken_for_applied(
    netns: NamespaceFactory,
) -> None:
    namespace = netns.create("raced")
    honest = NftablesBackend(LibNftablesRunner(), owner=OWNER)
    blind = NftablesBackend(BlindProbe(), owner=OWNER)
    try:
        want = honest.desired(FTP)
        honest.sync(namespace, FTP, want)
        nft(namespace, "add", "element", "inet", "cthm", "ingress-ftp-tcp", "{ 8021 }")
        try:
            before, after = blind.sync(namespace, FTP, want)
        except NftError:
            pass  # refused: the caller retries, as after any failed sync
        else:
            assert before is None  # what the (blind) probe said
            assert after != want  # the read-back shows the table it added to
        # The next sync that sees the table replaces it.
        assert honest.sync(namespace, FTP, want)[1] == want
    finally:
        blind.close()
        honest.close()
