"""Clean shutdown and lifetimes.

SIGTERM while changes stream: `cthm serve` exits 0 (within ServerProcess's bound) and leaves
the kernel tables in place; a restart converges, and where the kernel is already right it
rewrites nothing (the table's kernel handle stays). Starting and stopping the in-process
Service (its agent on a real namespace) several times leaks no thread and no descriptor.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from cthm.cli.service import Service
from cthm.domain import HelperCatalog, ListQuery, new_binding, new_router
from cthm.netfilter.scratch import PREFIX as SCRATCH_PREFIX
from cthm.settings import Settings
from cthm.testing import NamespaceFactory
from cthm.testing.netns import NETNS_DIR
from support.faults import (
    FOREIGN_TABLE,
    HELPERS,
    Api,
    ServerFactory,
    add_foreign_table,
    desired_kernel_table,
    kernel_table,
    nft_text,
    table_handle,
    wait_settled,
    wait_until,
)

pytestmark = pytest.mark.kernel

MAX_OPS = 300
LEAK_CYCLES = 5


def churn(api: Api, router_ids: list[str], rng: random.Random, done: list[int]) -> None:
    """Creates and deletes bindings until the server stops answering (or MAX_OPS)."""
    mine: list[tuple[str, str]] = []
    for op in range(MAX_OPS):
        try:
            if mine and rng.random() < 0.4:
                router_id, binding_id = mine.pop(rng.randrange(len(mine)))
                api.delete_binding(router_id, binding_id)
            else:
                router_id = rng.choice(router_ids)
                protocol = rng.choice(("tcp", "udp"))
                port = 3000 + op
                response = api.create_binding(router_id, protocol, port, HELPERS[protocol][0])
                if response.status_code == 201:
                    mine.append((router_id, response.json()["conntrack_helper"]["id"]))
        except httpx.TransportError:
            break
        done[0] += 1


def test_sigterm_keeps_the_kernel_state_and_restart_rewrites_nothing_correct(
    make_server: ServerFactory, netns: NamespaceFactory, counts: Counter[str]
) -> None:
    # One worker: the start-up resync (all routers, queued before the API listens) is done
    # before any later change is, which gives the test a point where "nothing rewritten" holds.
    server = make_server(env={"CTHM_AGENT_WORKERS": "1"})
    namespaces = [netns.create(f"s{i}") for i in range(2)]
    foreign = {ns: add_foreign_table(ns) for ns in namespaces}
    rng = random.Random()
    with Api(server) as api:
        routers = {api.create_router(ns, f"s{i}"): ns for i, ns in enumerate(namespaces)}
        settled = wait_settled(api, routers)
        assert settled.ok, settled.problems
        done = [0]
        thread = threading.Thread(target=churn, args=(api, sorted(routers), rng, done))
        thread.start()
        thread.join(rng.uniform(0.1, 0.5))
        assert server.stop(signal.SIGTERM) == 0, server.logs()
        counts["faults_injected"] += 1
        thread.join(10)
        assert not thread.is_alive()
    counts["writes_before_sigterm"] = done[0]
    # cthm is down: its tables stay in the kernel (traffic keeps its helpers).
    for ns in namespaces:
        table = kernel_table(ns)
        assert table is not None, ns
        assert table.clean, (ns, table)

    server.start()
    with Api(server) as api:
        settled = wait_settled(api, routers)
        assert settled.ok, (settled.problems, server.logs())
        texts = {ns: nft_text(ns) for ns in namespaces}
        handles = {ns: table_handle(ns) for ns in namespaces}
        assert None not in handles.values(), handles
    assert server.stop(signal.SIGTERM) == 0, server.logs()
    counts["faults_injected"] += 1

    server.start()
    marker_ns = netns.create("s-marker")
    with Api(server) as api:
        # Queued after the start-up resync of the others: once it is applied, they were seen.
        marker = api.create_router(marker_ns, "marker")
        assert api.create_binding(marker, "tcp", 21, "ftp").status_code == 201
        settled = wait_settled(api, {**routers, marker: marker_ns})
        assert settled.ok, (settled.problems, server.logs())
    for ns in namespaces:
        assert table_handle(ns) == handles[ns], f"{ns}: a correct table was rewritten"
        assert nft_text(ns) == texts[ns]
        assert nft_text(ns, FOREIGN_TABLE) == foreign[ns]
    counts["restarts_without_rewrite"] += 1


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _namespaces(*prefixes: str) -> set[str]:
    """Namespaces this process could have made: others' (a parallel test, another cthm) come
    and go meanwhile and say nothing about a leak here."""
    if not NETNS_DIR.is_dir():
        return set()
    return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefixes)}


def test_service_start_stop_leaks_no_thread_or_descriptor(
    netns: NamespaceFactory, tmp_path: Path, counts: Counter[str]
) -> None:
    namespace = netns.create("leak")
    catalog = HelperCatalog()
    settings = Settings(data_dir=tmp_path / "data", resync_interval=0.5, sweep_orphans=False)

    def cycle(port: int) -> None:
        with Service(settings, say=lambda _: None) as service:
            assert service.agent is not None
            with service.store.unit_of_work() as repo:
                routers = repo.list_routers(ListQuery())
                if routers:
                    router = routers[0]
                    for binding in repo.list_bindings(ListQuery(), router_id=router.id):
                        repo.delete_binding(router.id, binding.id)
                else:
                    router = repo.add_router(
                        new_router(name="leak", project_id="faults", namespace=namespace)
                    )
                repo.add_binding(
                    new_binding(catalog, router, protocol="tcp", port=port, helper="ftp")
                )
            want = desired_kernel_table([{"protocol": "tcp", "port": port, "helper": "ftp"}])
            # The agent really worked in this cycle: the kernel holds this cycle's binding.
            assert wait_until(lambda: kernel_table(namespace) == want, 10.0), port

    cycle(4000)  # warm-up: imports, caches, the SQLite and libnftables libraries
    ours = (netns.prefix, f"{SCRATCH_PREFIX}{os.getpid()}-")  # the helper probe's scratch ones
    threads, fds, spaces = threading.active_count(), _open_fds(), _namespaces(*ours)
    for index in range(LEAK_CYCLES):
        cycle(4001 + index)
        counts["service_cycles"] += 1

    assert wait_until(lambda: threading.active_count() <= threads, 5.0), [
        t.name for t in threading.enumerate()
    ]
    assert wait_until(lambda: _open_fds() <= fds, 5.0), {
        fd: os.readlink(f"/proc/self/fd/{fd}") for fd in _open_fds() - fds if _exists(fd)
    }
    assert _namespaces(*ours) == spaces, "a namespace was left behind (the helper probe's?)"
    counts["threads_at_end"] = threading.active_count()
    counts["fds_at_end"] = len(_open_fds())


def _exists(fd: str) -> bool:
    return os.path.exists(f"/proc/self/fd/{fd}")
