"""Fixtures for the nftables backend tests: runners, and views of a namespace's real ruleset."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cthm.netfilter import LibNftablesRunner, NftRunner, SubprocessRunner
from cthm.testing import run_in_namespace


@pytest.fixture(scope="module")
def lib_runner() -> Iterator[LibNftablesRunner]:
    runner = LibNftablesRunner()
    yield runner
    runner.close()


@pytest.fixture
def lib() -> Iterator[LibNftablesRunner]:
    """A libnftables runner of the test's own (its contexts and generations start empty)."""
    runner = LibNftablesRunner()
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def sub_runner() -> Iterator[SubprocessRunner]:
    runner = SubprocessRunner(timeout=10)
    yield runner
    runner.close()


class CountingRunner:
    """Passes every call to a real runner and records it (a spy, not a stand-in)."""

    def __init__(self, inner: NftRunner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str, bool, bool]] = []

    def run(
        self, namespace: str, commands: str, *, json: bool = False, dry_run: bool = False
    ) -> str:
        self.calls.append((namespace, commands, json, dry_run))
        return self.inner.run(namespace, commands, json=json, dry_run=dry_run)

    @property
    def commands(self) -> list[tuple[str, bool]]:
        """(text, as JSON) of every call so far."""
        return [(commands, json) for _, commands, json, _ in self.calls]

    def close(self) -> None:
        """The inner runner is shared by the module; its fixture closes it."""


@pytest.fixture(params=["libnftables", "subprocess"])
def runner(
    request: pytest.FixtureRequest, lib_runner: LibNftablesRunner, sub_runner: SubprocessRunner
) -> CountingRunner:
    return CountingRunner(lib_runner if request.param == "libnftables" else sub_runner)


def nft(namespace: str, *args: str, stdin: str | None = None) -> str:
    """Runs the real nft in the namespace, independently of the runners under test."""
    return run_in_namespace(namespace, ["nft", *args], input=stdin).stdout


def ruleset_outside_cthm(namespace: str) -> str:
    """`nft list ruleset` text with the `table inet cthm { ... }` block cut out."""
    kept: list[str] = []
    skipping = False
    for line in nft(namespace, "list", "ruleset").splitlines():
        if line.startswith("table inet cthm {"):
            skipping = True
        if not skipping:
            kept.append(line)
        if skipping and line == "}":
            skipping = False
    return "\n".join(kept)


def normalized_ruleset(json_text: str) -> list[str]:
    """nft's JSON ruleset without metainfo and handles, sorted: comparable between kernels."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "handle"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    items = json.loads(json_text)["nftables"]
    return sorted(json.dumps(strip(i), sort_keys=True) for i in items if "metainfo" not in i)


FOREIGN_RULESET = """\
add table inet filter
add chain inet filter forward { type filter hook forward priority filter; policy drop; }
add rule inet filter forward tcp dport 21 counter accept
add rule inet filter forward udp dport 69 accept comment "tftp in"
add table ip nat
add chain ip nat postrouting { type nat hook postrouting priority srcnat; policy accept; }
add rule ip nat postrouting counter
add table inet other
add ct helper inet other ftp-tcp { type "ftp" protocol tcp; l3proto inet; }
add chain inet other prerouting { type filter hook prerouting priority filter; policy accept; }
add rule inet other prerouting tcp dport 2121 ct helper set "ftp-tcp"
"""
"""Another owner's state in the same namespace: a firewall, NAT, and another helper user,
including a `ct helper` object with the same name as one of ours."""
