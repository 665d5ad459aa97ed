"""Network namespaces for tests: unique names, and deletion of exactly the ones created.

Safety rules: nothing here touches the root namespace's firewall or routes; cleanup deletes
only names this factory created, never by pattern.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def run_in_namespace(
    namespace: str,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 10.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Runs argv inside the namespace with `ip netns exec` (argv list, never a shell)."""
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


class NamespaceFactory:
    """Creates namespaces named `<prefix><n>-<label>` and deletes exactly those on cleanup()."""

    def __init__(self, prefix: str | None = None) -> None:
        # Short: names also appear in veth peer bookkeeping; unique per process and run.
        self.prefix = prefix or f"cthmt{os.getpid() % 10000}{secrets.token_hex(2)}-"
        self._created: list[str] = []

    @property
    def created(self) -> tuple[str, ...]:
        return tuple(self._created)

    def name(self, label: str) -> str:
        """A name this factory would use for `label`, without creating it."""
        return f"{self.prefix}{label}"

    def create(self, label: str) -> str:
        name = self.name(label)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
        self._created.append(name)
        # Loopback up: some tools (and helpers' expectation tests) use 127.0.0.1 inside.
        run_in_namespace(name, ["ip", "link", "set", "lo", "up"])
        return name

    def adopt(self, name: str) -> None:
        """Registers a namespace created by other means (e.g. by code under test) for cleanup."""
        if not name.startswith(self.prefix):
            raise ValueError(f"{name} does not carry this factory's prefix {self.prefix}")
        if name not in self._created:
            self._created.append(name)

    def delete(self, name: str) -> None:
        if name not in self._created:
            raise ValueError(f"{name} was not created by this factory")
        self._created.remove(name)
        if netns_exists(name):
            subprocess.run(
                ["ip", "netns", "del", name], check=False, capture_output=True, timeout=10
            )

    def cleanup(self) -> list[str]:
        """Deletes every namespace this factory created; returns those that could not be."""
        failed = []
        for name in reversed(self._created):
            if netns_exists(name):
                result = subprocess.run(
                    ["ip", "netns", "del", name], check=False, capture_output=True, timeout=10
                )
                if result.returncode != 0:
                    failed.append(name)
        self._created.clear()
        return failed
