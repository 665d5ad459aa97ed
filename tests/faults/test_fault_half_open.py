"""Half-sent requests never take the API or the agent down.

5,000 loopback connections each send part of a request line and headers and nothing more,
against a real `cthm serve` whose open-file limit is lowered (prlimit) below that number, as a
host's limit would be. Before the fix none was ever timed out: the server ran out of
descriptors, accept() failed in a loop (logged thousands of times a second), /healthz went
unanswered and the agent could not open the router's namespace. Now the connections beyond
the cap (max_connections) push out the oldest incomplete ones, the server's descriptors stay
bounded, /healthz answers at once, a binding created meanwhile reaches the kernel, the rest
are closed after header_timeout, and the log says so in a few lines.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from cthm.testing import NamespaceFactory
from support.faults import Api, ServerFactory, wait_settled, wait_until

# serial: the bound (/healthz within 1 s under 5,000 half-open connections) is about
# this server, not about another test's load on the other core, so `make test` runs it alone.
pytestmark = [pytest.mark.kernel, pytest.mark.serial]

HALF_OPEN = 5000
SERVER_FILE_LIMIT = 4000  # fewer descriptors than half-open connections
MAX_CONNECTIONS = 500
HEADER_TIMEOUT = 3.0
OPEN_DEADLINE = 60.0  # seconds for opening them all, however slowly the server accepts
CONNECT_TIMEOUT = 1.0
PARTIAL = b"GET /v2.0/routers HTTP/1.1\r\nHost: cthm\r\nX-Auth-Token: cthm_"
MAX_LOG_LINES = 60


@contextmanager
def descriptor_room(count: int) -> Iterator[None]:
    """This test process's soft open-file limit raised to fit `count` sockets (within the hard
    limit), and put back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"needs {count} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_half_requests(port: int, count: int, counts: Counter[str]) -> list[socket.socket]:
    """Up to `count` connections, each with part of a request sent; bounded in time."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + OPEN_DEADLINE
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
        except OSError:
            counts["connect_failed"] += 1
            continue
        opened.append(connection)
        try:
            connection.sendall(PARTIAL)
        except OSError:
            counts["send_failed"] += 1  # already closed by the server: that is allowed
    counts["half_open"] = len(opened)
    return opened


def closed_by_peer(connections: list[socket.socket], timeout: float) -> int:
    """How many of `connections` the server closed (EOF or reset) within `timeout`."""
    poller = select.poll()
    by_fd = {c.fileno(): c for c in connections}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(closed) < len(by_fd) and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            try:
                data = by_fd[fd].recv(1024)
            except OSError:
                data = b""
            if not data:
                closed.add(fd)
                poller.unregister(fd)
    return len(closed)


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_open_connections_leave_the_api_and_the_agent_working(
    make_server: ServerFactory, netns: NamespaceFactory, counts: Counter[str]
) -> None:
    namespace = netns.create("halfopen")
    with descriptor_room(HALF_OPEN + 512):
        # Settings by environment, so the same test runs against a server without the flags.
        server = make_server(
            env={
                "CTHM_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                "CTHM_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            }
        )
        assert server.process is not None
        pid = server.process.pid
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (SERVER_FILE_LIMIT, SERVER_FILE_LIMIT))
        before = open_descriptors(pid)
        log_lines_before = len(server.stderr.splitlines())
        half_open: list[socket.socket] = []
        try:
            half_open = open_half_requests(server.port, HALF_OPEN, counts)
            assert len(half_open) > SERVER_FILE_LIMIT, counts

            with httpx.Client(base_url=server.url, timeout=5.0) as client:
                started = time.monotonic()
                health = client.get("/healthz")
                counts["healthz_ms"] = int((time.monotonic() - started) * 1000)
            # Answered within the client's timeout is the claim. No tighter bound: with the
            # listen backlog full of half-open connections the kernel may drop our SYN and the
            # client resends it after the 1 s initial RTO (seen: 1,024-1,146 ms, on the code
            # of the previous stop too), a figure of TCP, not of cthm.
            assert health.status_code == 200, health.text
            during = open_descriptors(pid)
            counts["server_fds_during"] = during
            assert during <= before + MAX_CONNECTIONS + 64, (before, during)

            # The agent still has the descriptors it needs: a binding reaches the kernel.
            with Api(server) as api:
                router_id = api.create_router(namespace, "halfopen")
                created = api.create_binding(router_id, "tcp", 21, "ftp")
                assert created.status_code == 201, created.text
                settled = wait_settled(api, {router_id: namespace})
                assert settled.ok, (settled.problems, server.logs())
                binding = api.bindings(router_id)[0]
                assert binding["status"] == "ACTIVE", binding

            # What is still held is closed once header_timeout has passed.
            closed = closed_by_peer(half_open, HEADER_TIMEOUT + 5.0)
            counts["closed_by_server"] = closed
            assert closed == len(half_open), counts
            assert wait_until(lambda: open_descriptors(pid) <= before + 8, 5.0), (
                before,
                open_descriptors(pid),
            )
            # Everything the flood took is given back: a full cap of new clients is served.
            clients = [httpx.Client(base_url=server.url, timeout=5.0) for _ in range(20)]
            try:
                assert all(c.get("/healthz").status_code == 200 for c in clients)
            finally:
                for c in clients:
                    c.close()
        finally:
            for connection in half_open:
                connection.close()

    # A few lines say what happened, never one per connection.
    log_lines = server.stderr.splitlines()[log_lines_before:]
    counts["log_lines"] = len(log_lines)
    assert len(log_lines) <= MAX_LOG_LINES, "\n".join(log_lines[:20])
    text = "\n".join(log_lines)
    assert "max_connections" in text, text
    assert "header_timeout" in text, text
    assert "Traceback" not in text, text
