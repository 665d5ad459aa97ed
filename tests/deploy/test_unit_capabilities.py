"""The capabilities deploy/systemd/cthm-api.service gives `cthm serve` are enough, and each
of them is needed.

`cthm serve` (embedded agent) runs as root with its capability bounding set cut to the unit's
CapabilityBoundingSet (`setpriv`, as systemd does), and programs a router in a namespace the
test made: ACTIVE with the unit's set; ERROR without CAP_SYS_ADMIN (setns(2) is refused) or
without CAP_NET_ADMIN (nftables refuses).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cthm.testing import NamespaceFactory
from cthm.testing.service import CTHM, clean_env, free_port

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "cthm-api.service"
SETPRIV = shutil.which("setpriv")
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 15.0
WHY = {
    "CAP_SYS_ADMIN": "cthm needs CAP_SYS_ADMIN",
    "CAP_NET_ADMIN": "Operation not permitted",
}

pytestmark = pytest.mark.skipif(
    SETPRIV is None or os.geteuid() != 0, reason="needs root and setpriv (util-linux)"
)


def unit_capabilities() -> set[str]:
    for line in UNIT.read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return set(line.partition("=")[2].split())
    raise AssertionError(f"{UNIT} sets no CapabilityBoundingSet")


@contextmanager
def serve_with(capabilities: set[str], directory: Path) -> Iterator[httpx.Client]:
    """`cthm serve` whose capabilities are `capabilities` only; an admin client of it. The
    process is stopped by its pid whatever happens."""
    assert SETPRIV is not None
    keep = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in sorted(capabilities))
    port = free_port()
    data = directory / "data"
    log = directory / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                SETPRIV,
                f"--bounding-set=-all{',' if keep else ''}{keep}",
                str(CTHM),
                "serve",
                "--data-dir",
                str(data),
                "--port",
                str(port),
                "--resync-interval",
                "0.5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"cthm serve did not start: {log.read_text(errors='replace')}")
        token = (data / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers={"X-Auth-Token": token}, timeout=5.0) as client:
            yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def settled_router(client: httpx.Client, namespace: str) -> dict[str, str]:
    """Registers a router with one binding in `namespace`; its status once it is no longer
    PENDING (or PENDING after SETTLE_TIMEOUT)."""
    body = {"router": {"name": "caps", "namespace": namespace}}
    created = client.post("/v2.0/routers", json=body)
    assert created.status_code == 201, created.text
    router_id = created.json()["router"]["id"]
    binding = {"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "ftp"}}
    added = client.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=binding)
    assert added.status_code == 201, added.text
    deadline = time.monotonic() + SETTLE_TIMEOUT
    router: dict[str, str] = {}
    while time.monotonic() < deadline:
        router = client.get(f"/v2.0/routers/{router_id}").json()["router"]
        url = f"/v2.0/routers/{router_id}/conntrack_helpers"
        helpers: list[dict[str, str]] = client.get(url).json()["conntrack_helpers"]
        if router["status"] != "PENDING" and all(h["status"] != "PENDING" for h in helpers):
            break
        time.sleep(0.1)
    return router


def test_the_units_capabilities_are_enough(netns: NamespaceFactory, tmp_path: Path) -> None:
    capabilities = unit_capabilities()
    assert capabilities == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
    namespace = netns.create("caps")
    with serve_with(capabilities, tmp_path) as client:
        router = settled_router(client, namespace)
    assert router["status"] == "ACTIVE", router
    listed = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "cthm"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert "ftp-tcp" in listed.stdout, listed  # the helper object the agent wrote


@pytest.mark.parametrize("missing", ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"])
def test_each_capability_is_needed(netns: NamespaceFactory, tmp_path: Path, missing: str) -> None:
    namespace = netns.create("nocap")
    with serve_with(unit_capabilities() - {missing}, tmp_path) as client:
        router = settled_router(client, namespace)
    assert router["status"] == "ERROR", router
    # Without CAP_SYS_ADMIN setns(2) fails (EPERM): the reason names the capability, never
    # "not found"; without CAP_NET_ADMIN nftables says "Operation not permitted".
    assert WHY[missing] in router["status_reason"], router
    assert "not found" not in router["status_reason"], router
