"""The agent's end of a kernel worker's socket (netfilter/worker_channel.py): messages framed
as the worker's multiprocessing Connection frames them, both ways; several messages read in
one piece come out one at a time; a receive waits at most its timeout (TimeoutError), an end
closed by the other side is EOFError; receive_now never waits."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from cthm.netfilter.worker_channel import NOTHING, Channel


@pytest.fixture
def ends() -> Iterator[tuple[Channel, Connection]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel, conn = Channel(ours), Connection(theirs.detach())
    yield channel, conn
    channel.close()
    conn.close()


def test_messages_go_both_ways_as_a_connection_frames_them(
    ends: tuple[Channel, Connection],
) -> None:
    channel, conn = ends
    request = ("sync", "qrouter-1", ((("tcp", 21, "ftp", "ingress"),), (), (), None), None)
    channel.send(request)
    assert conn.recv() == request
    conn.send(("ok", ("want", "want", (1, 2, 3))))
    assert channel.receive(5.0) == ("ok", ("want", "want", (1, 2, 3)))
    big = ("ok", tuple(range(50_000)))  # more than one read's worth
    conn.send(big)
    assert channel.receive(5.0) == big


def test_answers_read_in_one_piece_come_out_one_at_a_time(
    ends: tuple[Channel, Connection],
) -> None:
    channel, conn = ends
    for index in range(3):
        conn.send(("ok", index))
    assert [channel.receive(5.0) for _ in range(3)] == [("ok", 0), ("ok", 1), ("ok", 2)]
    assert channel.receive_now() is NOTHING


def test_a_receive_gives_up_after_its_timeout_and_sees_the_other_end_close(
    ends: tuple[Channel, Connection],
) -> None:
    channel, conn = ends
    assert channel.receive_now() is NOTHING
    with pytest.raises(TimeoutError):
        channel.receive(0.05)
    conn.send(("ready",))
    assert channel.receive_now() == ("ready",)
    conn.close()
    with pytest.raises(EOFError):
        channel.receive(5.0)
    with pytest.raises(EOFError):
        channel.receive_now()


def test_a_send_to_an_end_that_is_gone_raises_broken_pipe(
    ends: tuple[Channel, Connection],
) -> None:
    channel, conn = ends
    conn.close()
    with pytest.raises(BrokenPipeError):
        channel.send(("sync", "x" * 300_000))
