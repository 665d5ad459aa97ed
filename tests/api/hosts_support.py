"""Helpers of the several-hosts API tests: a node agent's requests, as `cthm agent run` sends
them, over the real app (tests/api/support.Api)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from .support import JSON, Api

AGENT_KEYS = {
    "id",
    "agent_type",
    "binary",
    "host",
    "topic",
    "alive",
    "admin_state_up",
    "created_at",
    "started_at",
    "heartbeat_timestamp",
    "availability_zone",
    "description",
    "configurations",
}
CONFIGURATION_KEYS = {
    "backend",
    "chosen_by",
    "reason",
    "iptables_flavour",
    "iptables_flavour_reason",
    "retired_backends",
    "routers",
    "counts",
    "queue_depth",
    "resync_interval",
    "deployment_id",
    "unclaimed_kernel_state",
}
HOST_ENTRY_KEYS = {
    "host",
    "agent_id",
    "agent_alive",
    "revision_number",
    "status",
    "status_reason",
    "in_sync",
    "table_present",
    "missing",
    "unexpected",
    "garbage",
    "checked_at",
    "verified_at",
    "last_error",
    "last_error_at",
    "drift_repairs",
}


def report(
    api: Api,
    host: str,
    namespaces: Sequence[str],
    *,
    kernel: Sequence[JSON] = (),
    configurations: JSON | None = None,
    started_at: str | None = "2026-12-04T20:00:00Z",
) -> httpx.Response:
    """PUT /v2.0/hosts/{host}/agent: registration, heartbeat and discovery."""
    body = {
        "agent": {
            "started_at": started_at,
            "namespaces": list(namespaces),
            "configurations": configurations if configurations is not None else {},
            "kernel": list(kernel),
        }
    }
    return api.put(f"/v2.0/hosts/{host}/agent", json=body)


def registered(api: Api, host: str, namespaces: Sequence[str], **kwargs: Any) -> JSON:
    response = report(api, host, namespaces, **kwargs)
    assert response.status_code == 200, response.text
    body: JSON = response.json()
    return body


def report_status(
    api: Api,
    host: str,
    router_id: str,
    revision: int,
    status: str = "ACTIVE",
    reason: str = "",
    *,
    bindings: Sequence[JSON] = (),
    kernel: JSON | None = None,
) -> httpx.Response:
    """PUT /v2.0/hosts/{host}/routers/{id}/status: the host's report on one router."""
    body = {
        "status": {
            "revision_number": revision,
            "status": status,
            "status_reason": reason,
            "conntrack_helpers": list(bindings),
            "kernel": kernel,
        }
    }
    return api.put(f"/v2.0/hosts/{host}/routers/{router_id}/status", json=body)


def summary(router: JSON, **fields: Any) -> JSON:
    """A kernel summary of `router` as an agent sends it: in sync unless fields say otherwise."""
    body: JSON = {
        "router_id": router["id"],
        "namespace": router["namespace"],
        "revision_number": router["revision_number"],
        "in_sync": True,
        "table_present": True,
        "missing": [],
        "unexpected": [],
        "garbage": [],
        "checked_at": "2026-12-04T20:00:05Z",
        "verified_at": "2026-12-04T20:00:05Z",
        "last_error": None,
        "last_error_at": None,
        "drift_repairs": 0,
    }
    body.update(fields)
    return body


def router_of(api: Api, router_id: str) -> JSON:
    response = api.get(f"/v2.0/routers/{router_id}")
    assert response.status_code == 200, response.text
    router: JSON = response.json()["router"]
    return router


def watch(api: Api, since: int, **params: Any) -> httpx.Response:
    return api.get("/v2.0/watch", params={"since": since, **params})
