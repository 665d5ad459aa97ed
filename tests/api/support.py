"""Helpers of the API tests: a recording client over a real store, error-body checks."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from cthm.domain import HelperBinding, ListQuery, Router
from cthm.settings import Settings
from cthm.store import Store

JSON = dict[str, Any]

__all__ = [
    "JSON",
    "Api",
    "ApiFactory",
    "Snapshot",
    "TestClient",
    "error_of",
    "helpers_url",
    "make_settings",
    "make_store",
]


@dataclass
class Snapshot:
    """Everything the database holds about routers and bindings, as domain objects."""

    routers: list[Router]
    bindings: list[HelperBinding]


@dataclass
class Api:
    """A TestClient plus the store behind it and helpers that assert success."""

    client: TestClient = field(repr=False)
    store: Store = field(repr=False)
    statuses: list[tuple[str, str, int]] = field(default_factory=list, repr=False)
    allowed_5xx: set[int] = field(default_factory=set)

    def allow_status(self, status: int) -> None:
        self.allowed_5xx.add(status)

    # plain requests (no assertion)
    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.get(url, **kwargs)
        return response

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.post(url, **kwargs)
        return response

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.put(url, **kwargs)
        return response

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.delete(url, **kwargs)
        return response

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self.client.request(method, url, **kwargs)
        return response

    # helpers that must succeed
    def create_router(self, **fields: Any) -> JSON:
        fields.setdefault("name", "r")
        fields.setdefault("project_id", "p1")
        response = self.post("/v2.0/routers", json={"router": fields})
        assert response.status_code == 201, response.text
        router: JSON = response.json()["router"]
        return router

    def create_helper(
        self, router_id: str, protocol: str = "tcp", port: int = 21, helper: str = "ftp"
    ) -> JSON:
        body = {"conntrack_helper": {"protocol": protocol, "port": port, "helper": helper}}
        response = self.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)
        assert response.status_code == 201, response.text
        binding: JSON = response.json()["conntrack_helper"]
        return binding

    def snapshot(self) -> Snapshot:
        with self.store.unit_of_work(write=False) as repo:
            return Snapshot(repo.list_routers(ListQuery()), repo.list_bindings(ListQuery()))


def error_of(response: httpx.Response) -> JSON:
    """The Neutron error body, checked for its exact shape."""
    body = response.json()
    assert set(body) == {"NeutronError"}, body
    error: JSON = body["NeutronError"]
    assert set(error) == {"type", "message", "detail"}, error
    assert isinstance(error["type"], str)
    assert error["type"]
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["message"].isprintable()
    assert len(error["message"]) <= 1003
    assert error["detail"] == ""
    return error


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": tmp_path, "database_url": None, "agent_enabled": False}
    return Settings(**{**values, **overrides})


def make_store(settings: Settings) -> Store:
    store = Store(settings.effective_database_url)
    store.migrate()
    return store


ApiFactory = Callable[..., Api]


def helpers_url(router_id: str, binding_id: str | None = None) -> str:
    base = f"/v2.0/routers/{router_id}/conntrack_helpers"
    return base if binding_id is None else f"{base}/{binding_id}"
