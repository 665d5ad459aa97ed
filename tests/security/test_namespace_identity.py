"""One kernel namespace under several names, and names that lead to the host's namespace.

A bind mount in /run/netns gives a namespace a second name, a symlink a name that leads
anywhere (/proc/1/ns/net included). cthm identifies a namespace by its nsfs inode, never
follows a symlink there, never enters the host's or its own namespace, lets the router
registered first keep a shared namespace (the others are ERROR, naming it) and deletes only a
router's own table. Everything here is made under the test's unique prefix and removed by exact
path (umount, then rm); the host's ruleset is only ever read.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from cthm.agent import Agent, LocalStoreSource
from cthm.domain import HelperCatalog, new_binding, new_router
from cthm.netfilter import (
    IptablesBackend,
    LibNftablesRunner,
    NftablesBackend,
    SubprocessRunner,
    make_runner,
)
from cthm.netfilter.netns import UnsafeNamespace, namespace_identity
from cthm.store import Store
from cthm.testing import NamespaceFactory, run_in_namespace
from cthm.testing.service import ServerProcess
from support.namespace_names import Names

pytestmark = pytest.mark.kernel

NETNS_DIR = Path("/run/netns")
HOST_NAMESPACE = "/proc/1/ns/net"


def host_ruleset() -> str:
    """The root namespace's ruleset, read only."""
    return subprocess.run(
        ["nft", "list", "ruleset"], capture_output=True, text=True, check=True, timeout=10
    ).stdout


def cthm_table(namespace: str) -> str:
    """`table inet cthm` in the namespace ("" when absent), read with the tools, not cthm."""
    done = run_in_namespace(namespace, ["nft", "list", "table", "inet", "cthm"], check=False)
    return done.stdout if done.returncode == 0 else ""


def table_handle(namespace: str) -> str | None:
    """The kernel handle of `table inet cthm`: a table deleted and made again gets a new one."""
    text = run_in_namespace(namespace, ["nft", "-a", "list", "ruleset"]).stdout
    match = re.search(r"^table inet cthm \{ # handle (\d+)$", text, flags=re.M)
    return match.group(1) if match else None


def assert_owners_table(namespace: str) -> None:
    """The owner's ftp binding, none of the refused routers' tftp ones."""
    table = cthm_table(namespace)
    assert '"ftp"' in table, table
    assert "tftp" not in table, table


# --- the identity function and every path into a namespace -----------------------------------


def test_identity_is_the_kernel_namespace_and_symlinks_are_refused(
    netns: NamespaceFactory, names: Names
) -> None:
    victim, other = netns.create("victim"), netns.create("other")
    bound = names.bind("bm", NETNS_DIR / victim)
    link = names.symlink("sym", NETNS_DIR / victim)
    host = names.symlink("hostsym", HOST_NAMESPACE)
    assert namespace_identity(bound) == namespace_identity(victim) is not None
    assert namespace_identity(other) not in (None, namespace_identity(victim))
    assert namespace_identity(netns.name("absent")) is None
    for name in (link, host):
        with pytest.raises(UnsafeNamespace, match="symbolic link"):
            namespace_identity(name)

    # Every runner refuses the symlink before anything runs: nothing reaches the victim.
    lib = LibNftablesRunner()
    try:
        runners: list[LibNftablesRunner | SubprocessRunner] = [lib, SubprocessRunner()]
        for runner in runners:
            for name in (link, host):
                with pytest.raises(UnsafeNamespace, match="symbolic link"):
                    runner.run(name, "add table inet cthm\n")
        for name in (link, host):
            with pytest.raises(UnsafeNamespace, match="symbolic link"):
                IptablesBackend().read(name)
    finally:
        lib.close()
    assert cthm_table(victim) == ""
    # The real name still works, through both runners.
    SubprocessRunner().run(bound, "add table inet cthm\n")
    assert cthm_table(victim) != ""


def test_the_hosts_namespace_is_refused_under_any_name(
    netns: NamespaceFactory, names: Names
) -> None:
    before = host_ruleset()
    # A name for the namespace this test (and the agent it would start) runs in: the host's.
    own = names.bind("own", "/proc/self/ns/net")
    with pytest.raises(UnsafeNamespace, match="host's initial network namespace"):
        namespace_identity(own)
    lib = LibNftablesRunner()
    try:
        for runner in (lib, SubprocessRunner()):
            # Read-only commands: were the check missing, nothing would be written to the host.
            with pytest.raises(UnsafeNamespace, match="host's initial network namespace"):
                runner.run(own, "list tables")
    finally:
        lib.close()
    with pytest.raises(UnsafeNamespace):
        IptablesBackend().read(own)
    with pytest.raises(UnsafeNamespace):
        NftablesBackend(SubprocessRunner()).read(own)
    assert host_ruleset() == before


# --- a real `cthm serve`: registration and the agent -------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, httpx.Client]]:
    args = ("--resync-interval", "1")
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as running:
        headers = {"X-Auth-Token": running.admin_token}
        with httpx.Client(base_url=running.url, headers=headers, timeout=10) as client:
            yield running, client


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def router_of(client: httpx.Client, router_id: str) -> dict[str, object]:
    body: dict[str, object] = client.get(f"/v2.0/routers/{router_id}").json()["router"]
    return body


def create_router(client: httpx.Client, project: str, namespace: str) -> httpx.Response:
    body = {"router": {"name": namespace[-12:], "project_id": project, "namespace": namespace}}
    return client.post("/v2.0/routers", json=body)


def bind(client: httpx.Client, router_id: str, protocol: str, port: int, helper: str) -> None:
    body = {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}
    response = client.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)
    assert response.status_code == 201, response.text


def test_registration_refuses_names_of_a_namespace_already_known_or_the_hosts(
    server: tuple[ServerProcess, httpx.Client], netns: NamespaceFactory, names: Names
) -> None:
    _, client = server
    victim = netns.create("victim")
    first = create_router(client, "pa", victim)
    assert first.status_code == 201, first.text
    first_id = first.json()["router"]["id"]
    cases = {
        names.bind("bm", NETNS_DIR / victim): f"router {first_id}",
        names.symlink("sym", NETNS_DIR / victim): "symbolic link",
        names.symlink("hostsym", HOST_NAMESPACE): "symbolic link",
    }
    for namespace, why in cases.items():
        response = create_router(client, "pb", namespace)
        assert response.status_code == 409, response.text
        error = response.json()["NeutronError"]
        assert error["type"] == "Conflict"
        assert error["message"].startswith(f"Namespace {namespace} refused: ")
        assert why in error["message"]
    # A namespace that does not exist yet may still be registered (it is made later).
    assert create_router(client, "pb", netns.name("later")).status_code == 201
    listed = client.get("/v2.0/routers").json()["routers"]
    assert sorted(r["namespace"] for r in listed) == sorted([victim, netns.name("later")])


def test_agent_refuses_a_second_name_of_a_routers_namespace_and_the_hosts(
    server: tuple[ServerProcess, httpx.Client], netns: NamespaceFactory, names: Names
) -> None:
    _, client = server
    host_before = host_ruleset()
    victim, other = netns.create("victim"), netns.create("other")
    owner = create_router(client, "pa", victim).json()["router"]["id"]
    bind(client, owner, "tcp", 21, "ftp")
    wait_for(lambda: router_of(client, owner)["status"] == "ACTIVE", "the owner ACTIVE")

    # Registered before their names exist (allowed), then the names appear: a bind mount of
    # the victim, a symlink to another namespace of ours, a symlink to the host's namespace.
    late = {
        label: create_router(client, "pb", netns.name(label)).json()["router"]["id"]
        for label in ("bm", "sym", "hostsym")
    }
    for router_id in late.values():
        bind(client, router_id, "udp", 69, "tftp")
    names.bind("bm", NETNS_DIR / victim)
    names.symlink("sym", NETNS_DIR / other)
    names.symlink("hostsym", HOST_NAMESPACE)

    expected = {
        # Another project's router: its id is not shown to this router's project (404 rule).
        late["bm"]: "a router of another project, which was registered first and keeps it",
        late["sym"]: "is a symbolic link",
        late["hostsym"]: "is a symbolic link",
    }
    for router_id, why in expected.items():

        def refused(rid: str = router_id, why: str = why) -> bool:
            return why in str(router_of(client, rid)["status_reason"])

        wait_for(refused, f"router {router_id} refused")
    # Several resyncs (one a second): the victim keeps the owner's bindings, never the others'.
    for _ in range(4):
        for router_id, why in expected.items():
            router = router_of(client, router_id)
            assert router["status"] == "ERROR"
            assert why in str(router["status_reason"])
            assert owner not in str(router["status_reason"])
            helpers = client.get(f"/v2.0/routers/{router_id}/conntrack_helpers").json()
            assert [h["status"] for h in helpers["conntrack_helpers"]] == ["ERROR"]
        assert router_of(client, owner)["status"] == "ACTIVE"
        assert_owners_table(victim)
        assert cthm_table(other) == ""
        time.sleep(0.6)

    # Deleting the refused routers removes nothing: the owner's table stays as it is, never
    # deleted (and made again by the owner's next resync: its handle would change).
    handle = table_handle(victim)
    assert handle is not None
    for router_id in late.values():
        assert client.delete(f"/v2.0/routers/{router_id}").status_code == 204
    time.sleep(2.5)  # beyond two resyncs: every tombstone has been reconciled
    assert_owners_table(victim)
    assert table_handle(victim) == handle
    assert router_of(client, owner)["status"] == "ACTIVE"
    # Deleting the owner removes its own table.
    assert client.delete(f"/v2.0/routers/{owner}").status_code == 204
    wait_for(lambda: cthm_table(victim) == "", "the owner's table removed")

    after = host_ruleset()
    assert "table inet cthm" not in after
    assert after == host_before
    assert os.path.islink(NETNS_DIR / netns.name("hostsym"))  # still there for cleanup


# --- the start-up sweep ------------------------------------------------------------------------


def test_the_sweep_never_takes_a_second_name_of_a_routers_namespace_for_an_orphan(
    tmp_path: Path, netns: NamespaceFactory, names: Names
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'cthm.db'}")
    store.migrate()
    backend = NftablesBackend(make_runner("auto"), owner="deployment-a")
    catalog = HelperCatalog()
    try:
        victim = netns.create("victim")
        with store.unit_of_work() as repo:
            router = repo.add_router(new_router(name="r", project_id="p1", namespace=victim))
            repo.add_binding(new_binding(catalog, router, protocol="tcp", port=21, helper="ftp"))
        Agent(LocalStoreSource(store), backend, catalog, sweep_orphans=False).sync_all()
        table = cthm_table(victim)
        assert '"ftp"' in table
        names.bind("bm", NETNS_DIR / victim)  # claimed by no router, holds our marked table

        prefix = netns.prefix
        agent = Agent(
            LocalStoreSource(store),
            backend,
            catalog,
            resync_interval=3600,
            orphan_scope=lambda name: name.startswith(prefix),
        )
        assert agent.remove_orphans() == []
        assert cthm_table(victim) == table
    finally:
        backend.close()
        store.close()
