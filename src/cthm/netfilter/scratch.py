"""A short-lived network namespace of cthm's own, for dry-run probes that need one."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from cthm.netfilter.errors import NftOther

PREFIX = "cthm-probe-"


@contextmanager
def scratch_namespace() -> Iterator[str]:
    """Creates a uniquely named namespace and deletes exactly it afterwards."""
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    created = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, timeout=10, check=False
    )
    if created.returncode != 0:
        raise NftOther(f"cannot create namespace {name}: {created.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)
