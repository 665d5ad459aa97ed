"""What crosses between the agent and a kernel-worker process (netfilter/sync_processes.py):
tables and assignments as plain values come back equal, whatever they hold (helper objects,
garbage, an owner or none); a table equal to the desired one is sent as a word and read as the
caller's own desired table (the same object); anything else as itself."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cthm.domain import Assignment, Direction, Protocol
from cthm.netfilter import HelperObject, KernelTable
from cthm.netfilter.sync_processes import (
    _decoded_assignments,
    _decoded_table,
    _encoded_assignments,
    _encoded_table,
    _reply_table,
)

_assignments = st.lists(
    st.builds(
        Assignment,
        st.sampled_from(list(Protocol)),
        st.integers(1, 65535),
        st.sampled_from(["ftp", "tftp", "sip", "RAS", "irc"]),
        st.sampled_from(list(Direction)),
    ),
    max_size=20,
).map(tuple)
_tables = st.builds(
    KernelTable,
    _assignments,
    st.frozensets(
        st.builds(
            HelperObject,
            st.text(min_size=1, max_size=12),
            st.sampled_from(["ftp", "sip", "RAS"]),
            st.sampled_from(list(Protocol)),
            st.sampled_from(["inet", "ip", "ip6"]),
        ),
        max_size=4,
    ),
    st.lists(st.text(max_size=30), max_size=3).map(tuple),
    st.one_of(st.none(), st.text(min_size=1, max_size=36)),
)


@settings(deadline=None)  # no timing asserts (a loaded machine once took 0.3 s for one)
@given(_assignments)
def test_assignments_come_back_equal(assignments: tuple[Assignment, ...]) -> None:
    assert _decoded_assignments(_encoded_assignments(assignments)) == assignments


@settings(deadline=None)
@given(_tables, _tables)
def test_a_table_comes_back_equal_or_as_the_callers_own_desired_table(
    table: KernelTable, want: KernelTable
) -> None:
    reply = _reply_table(table, want)
    back = _decoded_table(reply, want)
    assert back == table
    if table == want:
        assert back is want  # the caller's object: its checks by identity hold
    else:
        assert reply == _encoded_table(table)
    assert _decoded_table(_reply_table(None, want), want) is None
