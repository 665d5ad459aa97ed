"""Live helper usage in a router's namespace: how many conntrack entries and expectations each
helper has right now, read with the `conntrack` tool (issue 16, "Live helper usage").

Counted per (kernel helper, protocol, original destination port): a binding is a protocol and
port bound to a helper, so two bindings of the same helper on different ports are told apart.
An expectation is counted under its master connection's port. The tool runs inside the
namespace entered by the descriptor `open_namespace` checked (subprocess_runner), argv only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cthm.netfilter.netns import NETNS_DIR
from cthm.netfilter.subprocess_runner import run_in_namespace, which

USAGE_TIMEOUT = 3.0  # seconds per conntrack call: kernel_state is answered on demand
_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "6": "tcp", "17": "udp"}

UsageKey = tuple[str, str, int]  # kernel helper, protocol, original destination port


@dataclass(frozen=True, slots=True)
class HelperUsage:
    connections: Counter[UsageKey] = field(default_factory=Counter)
    expectations: Counter[UsageKey] = field(default_factory=Counter)

    def of(self, helper: str, protocol: str, port: int) -> dict[str, int]:
        key = (helper, protocol, port)
        return {"connections": self.connections[key], "expectations": self.expectations[key]}


def parse_connections(text: str) -> Counter[UsageKey]:
    """`conntrack -L -o extended` lines with a helper, counted by helper, protocol and the
    original direction's destination port (the first dport=)."""
    counts: Counter[UsageKey] = Counter()
    for line in text.splitlines():
        words = line.split()
        helper = _value(words, "helper")
        if helper is None or len(words) < 3:
            continue
        protocol = _PROTOCOLS.get(words[2])
        port = _int(_value(words, "dport"))
        if protocol is not None and port is not None:
            counts[(helper, protocol, port)] += 1
    return counts


def parse_expectations(text: str) -> Counter[UsageKey]:
    """`conntrack -L expect` lines, counted by helper, protocol and the master connection's
    destination port (the dport= after master-dst=)."""
    counts: Counter[UsageKey] = Counter()
    for line in text.splitlines():
        words = line.split()
        helper = _value(words, "helper")
        protocol = _PROTOCOLS.get(_value(words, "proto") or "")
        master = next((i for i, w in enumerate(words) if w.startswith("master-dst=")), None)
        if helper is None or protocol is None or master is None:
            continue
        port = _int(_value(words[master:], "dport"))
        if port is not None:
            counts[(helper, protocol, port)] += 1
    return counts


def read_usage(
    namespace: str, *, timeout: float = USAGE_TIMEOUT, netns_dir: Path = NETNS_DIR
) -> HelperUsage:
    """Both tables of the namespace, read now. NftError (NamespaceNotFound, UnsafeNamespace,
    NftOther with the tool's message or a timeout) when they cannot be read."""
    tool = which("conntrack")
    flows = run_in_namespace(
        namespace,
        [tool, "-L", "-o", "extended"],
        program="conntrack",
        stdin=None,
        timeout=timeout,
        netns_dir=netns_dir,
    )
    expected = run_in_namespace(
        namespace,
        [tool, "-L", "expect"],
        program="conntrack",
        stdin=None,
        timeout=timeout,
        netns_dir=netns_dir,
    )
    return HelperUsage(parse_connections(flows), parse_expectations(expected))


def _value(words: list[str], name: str) -> str | None:
    prefix = name + "="
    return next((w[len(prefix) :] for w in words if w.startswith(prefix)), None)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None
