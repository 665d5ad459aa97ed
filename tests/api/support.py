"""Helpers of the API tests: a recording client over a real store, error-body checks.

Every `Api` sends a real token of its store (by default an admin's, made by `api_factory`);
`api.as_token(secret)` is a view of the same app and store sending another token, or none.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from cthm.api.auth import TOKEN_HEADER
from cthm.domain import HelperBinding, ListQuery, Router, parse_roles
from cthm.settings import Settings
from cthm.store import Store

JSON = dict[str, Any]

__all__ = [
    "JSON",
    "Api",
    "ApiFactory",
    "Snapshot",
    "State",
    "TestClient",
    "error_of",
    "helpers_url",
    "issue_token",
    "make_settings",
    "make_store",
    "state_of",
]


@dataclass
class Snapshot:
    """Everything the database holds about routers and bindings, as domain objects."""

    routers: list[Router]
    bindings: list[HelperBinding]


def issue_token(
    store: Store, project_id: str, roles: list[str], expires_at: datetime | None = None
) -> str:
    """A real token in `store`; returns its secret."""
    with store.unit_of_work() as repo:
        _, secret = repo.tokens.create(
            project_id=project_id, roles=parse_roles(roles), expires_at=expires_at
        )
    return secret


@dataclass
class Api:
    """A TestClient plus the store behind it and helpers that assert success.

    Requests carry `token` as X-Auth-Token, unless the request sets X-Auth-Token or
    Authorization itself (token None: no token).
    """

    client: TestClient = field(repr=False)
    store: Store = field(repr=False)
    statuses: list[tuple[str, str, int]] = field(default_factory=list, repr=False)
    allowed_5xx: set[int] = field(default_factory=set)
    token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)

    def allow_status(self, status: int) -> None:
        self.allowed_5xx.add(status)

    # tokens
    def issue_token(
        self, project_id: str, roles: list[str], expires_at: datetime | None = None
    ) -> str:
        """A real token in this API's store; returns its secret."""
        return issue_token(self.store, project_id, roles, expires_at)

    def as_token(self, token: str | None) -> Api:
        """This API (same app, store and 5xx bookkeeping) sending `token` (None: no token)."""
        return replace(self, token=token)

    # plain requests (no assertion)
    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = httpx.Headers(kwargs.pop("headers", None))
        chosen = TOKEN_HEADER in headers or "Authorization" in headers
        if self.token is not None and not chosen:
            headers[TOKEN_HEADER] = self.token
        response: httpx.Response = self.client.request(method, url, headers=headers, **kwargs)
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
        self,
        router_id: str,
        protocol: str = "tcp",
        port: int = 21,
        helper: str = "ftp",
        direction: str | None = None,
    ) -> JSON:
        fields: JSON = {"protocol": protocol, "port": port, "helper": helper}
        if direction is not None:  # absent, not null: the server's default
            fields["direction"] = direction
        body = {"conntrack_helper": fields}
        response = self.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)
        assert response.status_code == 201, response.text
        binding: JSON = response.json()["conntrack_helper"]
        return binding

    def snapshot(self) -> Snapshot:
        with self.store.unit_of_work(write=False) as repo:
            return Snapshot(repo.list_routers(ListQuery()), repo.list_bindings(ListQuery()))


@dataclass(frozen=True)
class State:
    """Everything a request could change: every router, binding and token, with every column
    (statuses, revisions, timestamps)."""

    routers: list[Any]
    bindings: list[Any]
    tokens: list[Any]


def state_of(api: Api) -> State:
    with api.store.unit_of_work(write=False) as repo:
        return State(
            repo.list_routers(ListQuery()),
            repo.list_bindings(ListQuery()),
            repo.tokens.list(ListQuery()),
        )


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
