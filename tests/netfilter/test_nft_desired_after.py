"""NftablesBackend.desired_after (issue 14): the desired table edited from the last one equals
desired() of the edited assignments, and still refuses what render refuses."""

from __future__ import annotations

from bisect import insort

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter import FakeNftables, NftablesBackend, UnsafeValue

OWNER = "6f1d2c3b-0000-4000-8000-00000000000d"
KINDS = [
    ("ftp", Protocol.TCP),
    ("tftp", Protocol.UDP),
    ("irc", Protocol.TCP),
    ("sip", Protocol.UDP),
]


def key(a: Assignment) -> tuple[Protocol, int, Direction]:
    return (a.protocol, a.port, a.direction)


assignment = st.builds(
    lambda kind, port, direction: Assignment(kind[1], port, kind[0], direction),
    st.sampled_from(KINDS),
    st.integers(1, 65535),
    st.sampled_from(list(Direction)),
)


@given(
    st.lists(assignment, max_size=30, unique_by=key),
    st.lists(assignment, max_size=5, unique_by=key),
    st.sets(st.integers(0, 29), max_size=5),
)
def test_desired_after_equals_desired(
    before: list[Assignment], added: list[Assignment], removed: set[int]
) -> None:
    backend = NftablesBackend(FakeNftables(), owner=OWNER)
    before.sort(key=key)
    previous = backend.desired(before)
    after = [a for i, a in enumerate(before) if i not in removed]
    keys = {key(a) for a in after}
    new = [a for a in added if key(a) not in keys]
    for a in new:
        insort(after, a, key=key)
    assert backend.desired_after(previous, after, new) == backend.desired(after)


def test_desired_after_refuses_what_render_refuses() -> None:
    backend = NftablesBackend(FakeNftables(), owner=OWNER)
    previous = backend.desired([Assignment(Protocol.TCP, 21, "ftp")])
    bad = Assignment(Protocol.TCP, 70000, "ftp")
    with pytest.raises(UnsafeValue):
        backend.desired_after(previous, [Assignment(Protocol.TCP, 21, "ftp"), bad], [bad])
