"""`cthm status` warns when another rule's `-j CT` in the namespace's raw table decides a
binding's helper before cthm does (a leftover Neutron conntrack helper rule), by each backend's
precedence (tests/traffic/test_helper_precedence.py pins it with traffic)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cthm_cli_harness import Result, ServerProcess, serving

from cthm.testing import NamespaceFactory, run_in_namespace

pytestmark = pytest.mark.kernel

NEUTRON_CHAIN = "neutron-l3-agent-PREROUTING"
NEUTRON_RULE = f"-A {NEUTRON_CHAIN} -p tcp -m tcp --dport 21 -j CT"
FTP = ("--protocol", "tcp", "--port", "21", "--helper", "ftp")


@pytest.fixture(scope="module", params=["nftables", "iptables"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """This module's `cthm serve`, once per backend (iptables: the nft flavour, as the Neutron
    rules below are written)."""
    backend = str(request.param)
    if shutil.which("iptables-nft-restore") is None:
        pytest.skip("iptables-nft not installed")
    flavour = ("--iptables-flavour", "nft") if backend == "iptables" else ()
    base = tmp_path_factory.mktemp(f"cthm-serve-{backend}")
    process = ServerProcess(base / "data", base / "logs", args=("--backend", backend, *flavour))
    with serving(process):
        yield process


@pytest.fixture
def backend(server: ServerProcess) -> str:
    return "iptables" if "iptables" in server.args else "nftables"


def add_neutron_rule(namespace: str, target: str) -> None:
    """Neutron's L3 agent's layout: its chain, jumped to from raw PREROUTING (appended)."""
    rules = f"*raw\n:{NEUTRON_CHAIN} - [0:0]\n-A PREROUTING -j {NEUTRON_CHAIN}\n"
    rules += f"{NEUTRON_RULE} {target}".rstrip() + "\nCOMMIT\n"
    run_in_namespace(namespace, ["iptables-nft-restore", "--noflush"], input=rules)


def router_with_ftp(cthm: Callable[..., Result], namespace: str, project: str) -> str:
    name = f"sh-{project}"
    for args in (
        ("router", "create", name, "--project", project, "--namespace", namespace),
        ("helper", "create", name, *FTP),
    ):
        assert cthm(*args).returncode == 0
    deadline = time.monotonic() + 10
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = status_json(cthm("--json", "status", name))
        if report["agent"] and report["agent"]["in_sync"]:
            return name
        time.sleep(0.05)
    raise AssertionError(f"the agent never applied the binding: {report}")


def status_json(result: Result) -> dict[str, Any]:
    """`cthm --json status`'s report; its exit status is 0 only when all is in sync (1 else)."""
    assert result.returncode in (0, 1), result
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def warnings(result: Result) -> list[str]:
    """The warning lines; a shadowed binding makes the check fail (exit status 1)."""
    found = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert result.returncode == (1 if found else 0), result
    return found


def test_no_warning_without_a_foreign_rule(
    cthm: Callable[..., Result], netns: NamespaceFactory, project: str
) -> None:
    name = router_with_ftp(cthm, netns.create("sh"), project)
    assert warnings(cthm("status", name)) == []
    assert status_json(cthm("--json", "status", name))["shadowed"] == []


def test_a_neutron_helper_rule_for_the_port_is_warned_about(
    cthm: Callable[..., Result], netns: NamespaceFactory, project: str
) -> None:
    namespace = netns.create("sh")
    add_neutron_rule(namespace, "--helper irc")  # first: its jump precedes cthm's
    name = router_with_ftp(cthm, namespace, project)

    rule = f"{NEUTRON_RULE} --helper irc"
    assert warnings(cthm("status", name)) == [
        f"warning: tcp/21 (ingress): rule `{rule}` in raw PREROUTING runs first: "
        "the kernel gives these connections helper irc, not ftp"
    ]
    (shadow,) = status_json(cthm("--json", "status", name))["shadowed"]
    assert {k: shadow[k] for k in ("protocol", "port", "direction", "helper", "rule")} == {
        "protocol": "tcp",
        "port": 21,
        "direction": "ingress",
        "helper": "ftp",
        "rule": rule,
    }
    assert shadow["foreign_helper"] == "irc"
    assert shadow["effect"] == "helper irc wins"
    assert shadow["families"] == ["IPv4"]


def test_a_template_without_helper_before_cthm_only_matters_to_iptables(
    cthm: Callable[..., Result], netns: NamespaceFactory, project: str, backend: str
) -> None:
    namespace = netns.create("sh")
    add_neutron_rule(namespace, "--zone 4")
    name = router_with_ftp(cthm, namespace, project)

    found = warnings(cthm("status", name))
    if backend == "nftables":
        assert found == []  # cthm's chain still assigns ftp after conntrack lookup
    else:
        assert found == [
            f"warning: tcp/21 (ingress): rule `{NEUTRON_RULE} --zone 4` in raw PREROUTING "
            "runs first: the kernel gives these connections no helper at all, not ftp"
        ]


def test_status_reads_the_kernel_here_on_either_backend(
    cthm: Callable[..., Result], netns: NamespaceFactory, project: str, backend: str
) -> None:
    """The read made now finds cthm's rules whichever backend wrote them, and sees them go."""
    namespace = netns.create("rd")
    name = router_with_ftp(cthm, namespace, project)
    report = status_json(cthm("--json", "status", name))
    assert report["source"] == "local"
    assert report["in_sync"] is True, report
    (row,) = report["bindings"]
    assert (row["protocol"], row["port"], row["kernel"]) == ("tcp", 21, "ftp")
    if backend == "iptables":
        drift = ["iptables-nft", "-t", "raw", "-F", "cthm-PREROUTING"]
    else:
        drift = ["nft", "flush", "table", "inet", "cthm"]
    run_in_namespace(namespace, drift)
    drifted = status_json(cthm("--json", "status", name))
    assert drifted["in_sync"] is False, drifted
    assert drifted["bindings"][0]["kernel"] is None
