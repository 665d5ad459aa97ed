"""A project id given empty is a wrong project id, never "the caller's project" (issue 10,
item 8): `POST /v2.0/routers` with `"project_id": ""` made the router in the admin's project.
Every body that takes a project id answers 400 naming the field, and stores nothing."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cthm.api import create_app
from cthm.api.auth import TOKEN_HEADER, Authenticator, FailureThrottle
from cthm.domain import ListQuery, parse_roles
from cthm.settings import Settings
from cthm.store import Store

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

EMPTY_OR_BLANK = ["", " ", "\t"]


class Admin:
    def __init__(self, client: TestClient, store: Store, token: str) -> None:
        self.client, self.store, self.token = client, store, token

    def send(self, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        response: httpx.Response = self.client.request(
            method, url, json=body, headers={TOKEN_HEADER: self.token}
        )
        assert response.status_code < 500, response.text
        return response

    def counts(self) -> tuple[int, int, int]:
        with self.store.unit_of_work(write=False) as repo:
            return (
                len(repo.list_routers(ListQuery())),
                len(repo.list_bindings(ListQuery())),
                len(repo.tokens.list(ListQuery())),
            )


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[Admin]:
    settings = Settings(data_dir=tmp_path, database_url=None, agent_enabled=False)
    store = Store(settings.effective_database_url)
    store.migrate()
    fast = Authenticator(FailureThrottle(base_delay=0.001, max_delay=0.004))
    client = TestClient(create_app(settings, store, authenticator=fast))
    with store.unit_of_work() as repo:
        _, secret = repo.tokens.create(
            project_id="admin", roles=parse_roles(["admin"]), expires_at=None
        )
    yield Admin(client, store, secret)
    client.close()
    store.close()


def _refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["NeutronError"]
    assert error["type"] in ("InvalidInput", "HTTPBadRequest"), error
    assert field in error["message"], error


@pytest.mark.parametrize("value", EMPTY_OR_BLANK)
@pytest.mark.parametrize("field", ["project_id", "tenant_id"])
def test_creating_a_router_with_an_empty_project_is_400(
    admin: Admin, field: str, value: str
) -> None:
    before = admin.counts()
    response = admin.send("POST", "/v2.0/routers", {"router": {"name": "r", field: value}})
    _refused(response, field)
    assert "letters, digits" in response.json()["NeutronError"]["message"]
    assert admin.counts() == before


def test_an_empty_project_beside_a_good_one_is_400(admin: Admin) -> None:
    body = {"router": {"name": "r", "project_id": "", "tenant_id": "p1"}}
    _refused(admin.send("POST", "/v2.0/routers", body), "project_id")
    body = {"router": {"name": "r", "project_id": "p1", "tenant_id": ""}}
    _refused(admin.send("POST", "/v2.0/routers", body), "tenant_id")
    assert admin.counts()[0] == 0


def test_a_given_project_is_still_used_and_none_means_the_callers(admin: Admin) -> None:
    given = admin.send("POST", "/v2.0/routers", {"router": {"name": "a", "tenant_id": "p1"}})
    assert given.status_code == 201, given.text
    assert given.json()["router"]["project_id"] == "p1"
    default = admin.send("POST", "/v2.0/routers", {"router": {"name": "b"}})
    assert default.status_code == 201, default.text
    assert default.json()["router"]["project_id"] == "admin"


@pytest.mark.parametrize("value", EMPTY_OR_BLANK)
def test_every_other_body_refuses_an_empty_project(admin: Admin, value: str) -> None:
    created = admin.send("POST", "/v2.0/routers", {"router": {"name": "r", "project_id": "p1"}})
    router = created.json()["router"]
    helpers = f"/v2.0/routers/{router['id']}/conntrack_helpers"
    ftp = {"protocol": "tcp", "port": 21, "helper": "ftp"}
    binding = admin.send("POST", helpers, {"conntrack_helper": ftp}).json()["conntrack_helper"]
    before = admin.counts()

    for field in ("project_id", "tenant_id"):
        _refused(
            admin.send("PUT", f"/v2.0/routers/{router['id']}", {"router": {field: value}}), field
        )
        tftp = {"protocol": "udp", "port": 69, "helper": "tftp", field: value}
        _refused(admin.send("POST", helpers, {"conntrack_helper": tftp}), field)
        _refused(
            admin.send("PUT", f"{helpers}/{binding['id']}", {"conntrack_helper": {field: value}}),
            field,
        )
    token = {"auth_token": {"project_id": value, "roles": ["member"]}}
    _refused(admin.send("POST", "/v2.0/auth_tokens", token), "project_id")

    assert admin.counts() == before
    shown = admin.send("GET", f"/v2.0/routers/{router['id']}").json()["router"]
    assert shown["project_id"] == "p1"
