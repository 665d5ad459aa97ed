"""A namespace this process may not enter is named as a permission problem, not as a missing
namespace: a real Python process, root but with CAP_SYS_ADMIN cut from its bounding set
(`setpriv`, as systemd's CapabilityBoundingSet does), reads a namespace the test made through
each way cthm enters one: libnftables' setns(2), nsenter for the tools (conntrack), and the
short-lived setns thread (the legacy iptables peek)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cthm.testing import NamespaceFactory

SETPRIV = shutil.which("setpriv")

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(
        SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv (util-linux)"
    ),
]

# Prints, per way in, the error's class and message as JSON.
PROBE = """
import json, sys
from cthm.netfilter import NftablesBackend, NftError, make_runner, read_usage
from cthm.netfilter.iptables import legacy_tables
namespace = sys.argv[1]
found = {}
runner = make_runner("libnftables")
ways = {
    "libnftables": lambda: NftablesBackend(runner).read(namespace),
    "nsenter": lambda: read_usage(namespace),
    "peek": lambda: legacy_tables(namespace),
}
for name, call in ways.items():
    try:
        call()
        found[name] = ["read", ""]
    except NftError as exc:
        found[name] = [type(exc).__name__, exc.message]
print(json.dumps(found))
"""


def probe(namespace: str, *capabilities: str) -> dict[str, list[str]]:
    assert SETPRIV is not None
    done = subprocess.run(
        [
            SETPRIV,
            f"--bounding-set={','.join(capabilities)}",
            sys.executable,
            "-c",
            PROBE,
            namespace,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, list[str]] = json.loads(done.stdout)
    return found


def test_entering_without_cap_sys_admin_names_the_capability(netns: NamespaceFactory) -> None:
    namespace = netns.create("perm")

    refused = probe(namespace, "-sys_admin")
    assert set(refused) == {"libnftables", "nsenter", "peek"}
    for way, (kind, message) in refused.items():
        assert kind == "NamespaceNotPermitted", (way, kind, message)
        assert f"cannot enter namespace {namespace}" in message, (way, message)
        assert "Operation not permitted" in message, (way, message)
        assert "CAP_SYS_ADMIN" in message, (way, message)
        assert "not found" not in message, (way, message)

    # The same probe with every capability reads (the refusal above is the capability's).
    allowed = probe(namespace, "+all")
    assert {way: kind for way, (kind, _) in allowed.items()} == {
        "libnftables": "read",
        "nsenter": "read",
        "peek": "read",
    }, allowed
