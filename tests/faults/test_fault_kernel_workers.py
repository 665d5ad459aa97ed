"""The agent's kernel-worker processes (netfilter/sync_processes.py) through a real `cthm
serve`: a restart's resync of a dozen routers is a burst that starts them; they hold none of
cthm's settings; the kernel ends as desired; and they end with the server, whether it stops
on SIGTERM or is killed with SIGKILL (their socket closes; nobody stops them then)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cthm.testing import NamespaceFactory
from support.faults import Api, ServerFactory, wait_settled, wait_until

pytestmark = pytest.mark.kernel

ROUTERS = 12
MODULE = b"cthm.netfilter.sync_worker"


def kernel_workers(parent: int) -> list[int]:
    """The server's children that are kernel workers."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if MODULE in command:
                found.append(int(child))
    return sorted(found)


def ended(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def started_workers(pid: int) -> list[int]:
    assert wait_until(lambda: len(kernel_workers(pid)) == 2, 30), "no kernel workers started"
    return kernel_workers(pid)


def test_kernel_workers_start_for_a_burst_and_end_with_the_server(
    make_server: ServerFactory, netns: NamespaceFactory
) -> None:
    server = make_server(env={"CTHM_AGENT_KERNEL_PROCESSES": "2"})
    namespaces = [netns.create(f"kw{i}") for i in range(ROUTERS)]
    with Api(server) as api:
        routers = {api.create_router(ns, f"kw{i}"): ns for i, ns in enumerate(namespaces)}
        for router_id in routers:
            assert api.create_binding(router_id, "tcp", 21, "ftp").status_code == 201
        assert wait_settled(api, routers).ok
    assert server.stop(signal.SIGTERM) == 0, server.logs()

    # A restart resyncs every router at once: the workers start.
    server.start()
    assert server.process is not None
    workers = started_workers(server.process.pid)
    for pid in workers:
        assert b"CTHM_" not in Path(f"/proc/{pid}/environ").read_bytes()
    with Api(server) as api:
        settled = wait_settled(api, routers)
        assert settled.ok, (settled.problems, server.logs())
    server.kill()  # SIGKILL: the workers see their socket close and exit by themselves
    assert wait_until(lambda: all(ended(pid) for pid in workers), 15), workers

    server.start()
    assert server.process is not None
    workers = started_workers(server.process.pid)
    assert server.stop(signal.SIGTERM) == 0, server.logs()
    assert all(ended(pid) for pid in workers)  # stopped by the server before it exited
