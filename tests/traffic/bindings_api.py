"""The topology's router as a cthm router, with bindings POSTed to a real `cthm serve`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from cthm.testing import Topology, run_in_namespace
from cthm.testing.service import ServerProcess

SETTLE_TIMEOUT = 10.0

Binding = tuple[str, int, str]
"""(protocol, port, helper) as the API takes them."""


class ApiRouter:
    """The topology's router registered with `service`, driven as the server's admin."""

    def __init__(self, service: ServerProcess, topology: Topology) -> None:
        self.service = service
        router = {"name": "edge", "project_id": "traffic", "namespace": topology.router_ns}
        with self._client() as client:
            created = client.post("/v2.0/routers", json={"router": router})
        assert created.status_code == 201, created.text
        self.url = f"/v2.0/routers/{created.json()['router']['id']}/conntrack_helpers"

    def bind(
        self, bindings: Sequence[Binding], *, direction: str | None = None
    ) -> list[dict[str, Any]]:
        """POSTs `bindings` (with `direction`, if given), waits (bounded) until the agent
        reports every binding of the router ACTIVE; returns them as the API shows them."""
        with self._client() as client:
            for protocol, port, helper in bindings:
                fields: dict[str, object] = {"protocol": protocol, "port": port, "helper": helper}
                if direction is not None:
                    fields["direction"] = direction
                response = client.post(self.url, json={"conntrack_helper": fields})
                assert response.status_code == 201, response.text
            listed: list[dict[str, Any]] = []
            for _ in range(int(SETTLE_TIMEOUT / 0.02)):
                listed = client.get(self.url).json()["conntrack_helpers"]
                if listed and all(b["status"] == "ACTIVE" for b in listed):
                    return listed
                time.sleep(0.02)
        raise AssertionError(f"bindings not ACTIVE: {listed}\n{self.service.logs()}")

    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.service.url, timeout=5.0, headers=self.service.auth_headers()
        )


def bind_through_api(
    service: ServerProcess, topology: Topology, bindings: Sequence[Binding]
) -> list[dict[str, Any]]:
    """Registers the topology's router and binds `bindings` (ingress) on it."""
    return ApiRouter(service, topology).bind(bindings)


def catalog(service: ServerProcess) -> dict[str, dict[str, Any]]:
    """The server's catalog, by "helper/protocol"."""
    with httpx.Client(base_url=service.url, timeout=5.0, headers=service.auth_headers()) as client:
        response = client.get("/v2.0/conntrack_helper_catalog")
        assert response.status_code == 200, response.text
        entries: list[dict[str, Any]] = response.json()["conntrack_helper_catalog"]
    return {f"{e['helper']}/{e['protocol']}": e for e in entries}


def expectations(namespace: str, family: str = "ipv4") -> str:
    """The namespace's conntrack expectations of one family (`conntrack -L expect -f`)."""
    argv = ["conntrack", "-L", "expect", "-f", family]
    return run_in_namespace(namespace, argv, timeout=5).stdout


def poll_expectations(
    namespace: str, helper: str, family: str = "ipv4", timeout: float = 1.0
) -> str:
    """Polls (bounded) until an expectation of `helper` shows; returns the last listing."""
    listing = ""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        listing = expectations(namespace, family)
        if f"helper={helper}" in listing or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return listing
