"""A full sync's read-back by nft's text listing (netfilter/listing.py), against the real
kernel: what listing.py expects is, byte for byte, what nft lists for every kind of table cthm
renders (every kernel helper, both directions, sets wrapped over lines, no owner or one); a
read-back that is not the desired table is never taken for it (the JSON listing then tells what
is there); and where nft lists otherwise than expected, syncs still verify, by JSON."""

from __future__ import annotations

import random

import pytest

from cthm.domain import Assignment, Direction, Protocol
from cthm.domain.catalog import KERNEL_HELPERS
from cthm.netfilter import LibNftablesRunner, NftablesBackend
from cthm.netfilter import backend as backend_module
from cthm.netfilter.listing import expected_listing
from cthm.netfilter.model import KernelTable
from cthm.testing import NamespaceFactory

from .conftest import nft
from .test_nft_generations_kernel import TrackedSpy

pytestmark = pytest.mark.kernel

TCP, UDP = Protocol.TCP, Protocol.UDP
OWNER = "6f1d2c3b-0000-4000-8000-00000000000d"
FTP = [Assignment(TCP, 21, "ftp"), Assignment(TCP, 2121, "ftp"), Assignment(UDP, 69, "tftp")]
LIST = "list table inet cthm"
KINDS = [(spec.name, protocol) for spec in KERNEL_HELPERS for protocol in sorted(spec.protocols)]


def tables(seed: int) -> list[list[Assignment]]:
    """Tables of every shape render writes: empty, one port, five and six in a set (one line
    and two), every helper in each direction, a thousand ports at random."""
    rnd = random.Random(seed)
    shapes: list[list[Assignment]] = [[], FTP[:1]]
    shapes += [[Assignment(TCP, 1000 + i, "ftp") for i in range(n)] for n in (5, 6, 11)]
    for direction in Direction:
        shapes.append([Assignment(p, 1000 + i, h, direction) for i, (h, p) in enumerate(KINDS)])
    for size in (37, 1000):
        chosen: dict[tuple[Protocol, int, Direction], Assignment] = {}
        for port in rnd.sample(range(1, 65536), size):
            helper, protocol = rnd.choice(KINDS)
            direction = rnd.choice(list(Direction))
            chosen[(protocol, port, direction)] = Assignment(protocol, port, helper, direction)
        shapes.append(list(chosen.values()))
    return shapes


@pytest.mark.parametrize("owner", [OWNER, None])
def test_what_listing_expects_is_what_nft_lists(
    lib: LibNftablesRunner, netns: NamespaceFactory, owner: str | None
) -> None:
    namespace = netns.create("lst")
    backend = NftablesBackend(lib, owner=owner)
    for assignments in tables(seed=14):
        backend.apply(namespace, assignments)
        assert expected_listing(backend.desired(assignments)) == nft(
            namespace, "list", "table", "inet", "cthm"
        )


def test_a_read_back_that_is_not_the_desired_table_is_never_taken_for_it(
    lib: LibNftablesRunner, netns: NamespaceFactory
) -> None:
    namespace = netns.create("lsw")
    spy = TrackedSpy(lib)
    backend = NftablesBackend(spy, owner=OWNER)
    other = backend.desired(FTP[:1])  # a desired table of other assignments than applied
    before, after = backend.sync(namespace, FTP, other)
    assert before is None
    assert after == backend.desired(FTP)  # what the kernel holds, from its JSON listing
    assert after != other
    assert spy.ran()[-2:] == [(LIST, False), (LIST, True)]  # the text differed: JSON told


def test_where_nft_lists_otherwise_syncs_verify_by_json_and_stop_listing_text(
    lib: LibNftablesRunner, netns: NamespaceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with another nft version's layout: the text never equals what listing.py expects."""

    def unlike(table: KernelTable) -> str:
        return "table inet cthm {\n}\n"

    monkeypatch.setattr(backend_module, "expected_listing", unlike)
    names = [netns.create(f"lso{i}") for i in range(10)]
    spy = TrackedSpy(lib)
    backend = NftablesBackend(spy, owner=OWNER)
    want = backend.desired(FTP)
    texts = []
    for namespace in names:
        spy.calls.clear()
        assert backend.sync(namespace, FTP, want) == (None, want)  # verified, by JSON
        texts.append((LIST, False) in spy.ran())
        assert (LIST, True) in spy.ran()
    assert texts == [True] * 8 + [False] * 2  # eight misses in a row: no text listing more
