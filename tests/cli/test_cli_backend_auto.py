"""`cthm serve --backend auto` and `--iptables-flavour`, with real server processes and router
namespaces the tests create: on a node whose router namespaces hold Neutron's iptables chains,
auto writes the bindings as iptables rules of the flavour holding Neutron's, says why, and keeps
its choice across restarts; switching the flavour migrates; a flavour whose tools are missing
is a one-line settings error."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from cthm_cli_harness import ServerProcess, assert_error, free_port, run

from cthm.testing import NamespaceFactory, run_in_namespace

SETTLE_TIMEOUT = 15.0
BINDINGS = (("tcp", 21, "ftp"), ("udp", 69, "tftp"))
CTHM_RULES = [
    "-A cthm-PREROUTING -p tcp -m tcp --dport 21 -j CT --helper ftp",
    "-A cthm-PREROUTING -p udp -m udp --dport 69 -j CT --helper tftp",
]
NEUTRON = """\
*raw
:neutron-l3-agent-PREROUTING - [0:0]
-A PREROUTING -j neutron-l3-agent-PREROUTING
-A neutron-l3-agent-PREROUTING -p tcp -m tcp --dport 2121 -j CT --helper ftp
COMMIT
*filter
:neutron-filter-top - [0:0]
-A FORWARD -j neutron-filter-top
COMMIT
"""


def installed(flavour: str) -> bool:
    return shutil.which(f"iptables-{flavour}-restore") is not None


@pytest.fixture(params=["nft", "legacy"])
def flavour(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if not installed(name):
        pytest.skip(f"iptables-{name} not installed")
    return name


def save(namespace: str, flavour: str) -> list[str]:
    text = run_in_namespace(namespace, [f"iptables-{flavour}-save"]).stdout
    return [line for line in text.splitlines() if not line.startswith("#")]


def foreign(namespace: str, flavour: str) -> list[str]:
    return [line for line in save(namespace, flavour) if "cthm" not in line]


def ours(namespace: str, flavour: str) -> list[str]:
    """cthm's helper rules, without the deployment's identity mark that heads each chain."""
    return [
        line
        for line in save(namespace, flavour)
        if line.startswith("-A cthm-") and "--comment" not in line
    ]


def legacy_tables(namespace: str) -> str:
    """The legacy tables that exist in the namespace (as the kernel lists them)."""
    names = ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
    return run_in_namespace(namespace, ["cat", *names]).stdout


def nft_tables(namespace: str) -> list[str]:
    return run_in_namespace(namespace, ["nft", "list", "tables"]).stdout.splitlines()


def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=5.0, headers=server.auth_headers())


def create_router(server: ServerProcess, namespace: str) -> tuple[str, list[str]]:
    with client(server) as http:
        body = {"router": {"name": "edge", "project_id": "p", "namespace": namespace}}
        created = http.post("/v2.0/routers", json=body)
        assert created.status_code == 201, created.text
        router_id = created.json()["router"]["id"]
        ids = []
        for protocol, port, helper in BINDINGS:
            binding = {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}
            made = http.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=binding)
            assert made.status_code == 201, made.text
            ids.append(made.json()["conntrack_helper"]["id"])
    return router_id, ids


def statuses(server: ServerProcess, router_id: str) -> dict[str, str]:
    with client(server) as http:
        body = http.get(f"/v2.0/routers/{router_id}/conntrack_helpers").json()
    return {b["id"]: b["status"] for b in body["conntrack_helpers"]}


def settle(check: object, server: ServerProcess) -> None:
    """Polls `check()` (bounded) until it is true."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not settled within {SETTLE_TIMEOUT}s: {server.logs()}")


def stored_router(tmp_path: Path, namespace: str) -> tuple[str, list[str]]:
    """A router and its bindings stored while no agent runs: the first agent to look at this
    node is the one under test (as where cthm is configured before its agent first starts)."""
    env = {"CTHM_AGENT_ENABLED": "false"}
    with ServerProcess(tmp_path / "data", tmp_path / "logs", env=env) as setup:
        made = create_router(setup, namespace)
        assert setup.stop() == 0, setup.logs()
    return made


def test_auto_on_a_neutron_node_writes_iptables_rules_of_neutrons_flavour(
    tmp_path: Path, netns: NamespaceFactory, flavour: str
) -> None:
    other = "legacy" if flavour == "nft" else "nft"
    ns = netns.create("qr")
    run_in_namespace(ns, [f"iptables-{flavour}-restore", "--noflush"], input=NEUTRON)
    neutron = foreign(ns, flavour)
    router_id, ids = stored_router(tmp_path, ns)

    args = ("--backend", "auto")
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as server:
        settle(lambda: set(statuses(server, router_id).values()) == {"ACTIVE"}, server)
        assert ours(ns, flavour) == CTHM_RULES
        assert foreign(ns, flavour) == neutron  # Neutron's chains byte-for-byte
        assert "table inet cthm" not in nft_tables(ns)
        if installed(other):
            assert ours(ns, other) == []
        if flavour == "nft":  # the retired legacy backend looked without creating tables
            assert legacy_tables(ns) == ""
        why = "other software's iptables rules in 1 of 1 router namespaces looked at"
        announced = server.stdout.splitlines()[-1]
        assert announced.startswith(
            f"cthm listening on {server.url} (data in {tmp_path / 'data'}; "
            f"backend iptables-{flavour}, chosen by auto: {why} (e.g. {ns}: chain neutron-"
        ), announced
        logged = [line for line in server.stderr.splitlines() if "chosen" in line or why in line]
        assert len(logged) == 1, server.stderr
        assert f" INFO cthm.cli.service: backend iptables-{flavour} (auto: {why}" in logged[0]
        retired = f"nftables, iptables-{other}" if installed(other) else "nftables"
        assert logged[0].endswith(f"; migrating away from: {retired}")
        assert server.stop() == 0, server.logs()

    # A restart keeps the choice: now cthm's own chains decide it.
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as again:
        expected = f"backend iptables-{flavour} (auto: cthm's iptables chains in 1 of 1 router"
        assert expected in again.stderr, again.logs()
        assert statuses(again, router_id) == dict.fromkeys(ids, "ACTIVE")
        assert ours(ns, flavour) == CTHM_RULES
        assert again.stop() == 0, again.logs()


def test_auto_on_an_empty_node_is_nftables(tmp_path: Path, netns: NamespaceFactory) -> None:
    ns = netns.create("plain")
    router_id, _ = stored_router(tmp_path, ns)
    args = ("--backend", "auto")
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=args) as server:
        settle(lambda: set(statuses(server, router_id).values()) == {"ACTIVE"}, server)
        assert "table inet cthm" in nft_tables(ns)
        assert legacy_tables(ns) == ""  # retired iptables-legacy looked, created nothing
        assert "backend nftables, chosen by auto: no cthm state" in server.stdout
        assert server.stop() == 0, server.logs()


def test_switching_the_iptables_flavour_migrates_the_routers(
    tmp_path: Path, netns: NamespaceFactory
) -> None:
    if not (installed("nft") and installed("legacy")):
        pytest.skip("needs both iptables-nft and iptables-legacy")
    ns = netns.create("sw")
    run_in_namespace(ns, ["iptables-legacy-restore", "--noflush"], input=NEUTRON)
    neutron = foreign(ns, "legacy")
    data, logs = tmp_path / "data", tmp_path / "logs"
    legacy = ("--backend", "iptables", "--iptables-flavour", "legacy")
    with ServerProcess(data, logs, args=legacy) as first:
        router_id, _ = create_router(first, ns)
        settle(lambda: set(statuses(first, router_id).values()) == {"ACTIVE"}, first)
        assert ours(ns, "legacy") == CTHM_RULES
        assert ours(ns, "nft") == []
        assert "backend iptables-legacy (configured:" in first.stderr
        assert first.stop() == 0, first.logs()

    env = {"CTHM_BACKEND": "iptables", "CTHM_IPTABLES_FLAVOUR": "nft"}
    with ServerProcess(data, logs, env=env) as second:
        settle(lambda: ours(ns, "legacy") == [] and ours(ns, "nft") == CTHM_RULES, second)
        assert not [line for line in save(ns, "legacy") if "cthm" in line]  # chain and jump
        assert foreign(ns, "legacy") == neutron
        assert "; migrating away from: nftables, iptables-legacy" in second.stderr
        assert second.stop() == 0, second.logs()


# --- settings ---------------------------------------------------------------------------------


def only_tools(tmp_path: Path, *names: str) -> str:
    """A PATH holding only these programs (links to the real ones)."""
    where = tmp_path / "bin"
    where.mkdir()
    for name in names:
        real = shutil.which(name)
        if real is not None:
            os.symlink(real, where / name)
    return str(where)


NFT_FLAVOUR = [f"{f}-nft-{a}" for f in ("iptables", "ip6tables") for a in ("save", "restore")]


@pytest.mark.parametrize(
    ("args", "tools", "message"),
    [
        (
            ("--iptables-flavour", "legacy"),
            ("ip", "nft", "iptables", *NFT_FLAVOUR),
            "iptables flavour legacy cannot be used: iptables-legacy-save, "
            "iptables-legacy-restore, ip6tables-legacy-save, ip6tables-legacy-restore "
            "not found on PATH",
        ),
        (
            ("--backend", "iptables"),
            ("ip", "nft"),
            "the iptables backend cannot be used: iptables-save, iptables-restore, "
            "ip6tables-save, ip6tables-restore not found on PATH",
        ),
    ],
)
def test_missing_iptables_tools_are_a_one_line_settings_error(
    tmp_path: Path, args: tuple[str, ...], tools: tuple[str, ...], message: str
) -> None:
    path = only_tools(tmp_path, *tools)
    data = tmp_path / "data"
    result = run(
        "serve", "--data-dir", str(data), "--port", str(free_port()), *args, env={"PATH": path}
    )
    assert assert_error(result, 2) == f"Error: {message}"
    assert not (data / "admin.token").exists()  # a start that fails creates no token


def test_bad_flavour_values_exit_2(tmp_path: Path) -> None:
    flag = run("serve", "--data-dir", str(tmp_path), "--iptables-flavour", "xtables")
    assert_error(flag, 2, "--iptables-flavour")
    env = run("serve", "--data-dir", str(tmp_path), env={"CTHM_IPTABLES_FLAVOUR": "xtables"})
    assert_error(env, 2, "invalid settings: iptables_flavour")
    backend = run("serve", "--data-dir", str(tmp_path), env={"CTHM_BACKEND": "ebtables"})
    assert_error(backend, 2, "invalid settings: backend")
