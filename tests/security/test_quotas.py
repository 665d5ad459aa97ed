"""Binding quotas (issue 10, 8d): one project could put thousands of bindings on a router.

Against a real `cthm serve` (agent off: this is the API's part) with small limits: a create past
the per-router or per-project quota is a 409 OverQuota in Neutron's body, naming the quota and
its limit, and stores nothing; a project's own quotas (`quotas` setting) replace the defaults;
concurrent creates at the limit cannot both succeed (counted in the create's transaction); the
CLI prints the message and exits 1. Settings: TOML `[quotas.<project>]`, -1 unlimited.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from cthm.domain import UNLIMITED, BindingQuota
from cthm.settings import load_settings
from cthm.testing.service import CTHM, TOKEN_HEADER, ServerProcess, clean_env

THREADS = 6
NEUTRON_MESSAGE = "Quota exceeded for resources: ['conntrack_helper']."


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """Per router 2, per project 3; project "big" may put 4 on a router and 10 in all."""
    env = {
        "CTHM_AGENT_ENABLED": "false",
        "CTHM_QUOTA_BINDINGS_PER_ROUTER": "2",
        "CTHM_QUOTA_BINDINGS_PER_PROJECT": "3",
        "CTHM_QUOTAS": json.dumps({"big": {"bindings_per_router": 4, "bindings_per_project": 10}}),
    }
    process = ServerProcess(tmp_path / "data", tmp_path / "logs", env=env)
    process.start()
    try:
        yield process
    finally:
        process.kill()


class Client:
    def __init__(self, server: ServerProcess, secret: str) -> None:
        self.http = httpx.Client(base_url=server.url, headers={TOKEN_HEADER: secret}, timeout=30)

    def router(self, project: str, name: str = "r") -> str:
        body = {"router": {"name": name, "project_id": project}}
        response = self.http.post("/v2.0/routers", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["router"]["id"])

    def bind(self, router_id: str, port: int) -> httpx.Response:
        body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
        return self.http.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)

    def bindings(self, router_id: str) -> list[dict[str, Any]]:
        response = self.http.get(f"/v2.0/routers/{router_id}/conntrack_helpers")
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["conntrack_helpers"]
        return found

    def token(self, project: str, role: str) -> str:
        body = {"auth_token": {"project_id": project, "roles": [role]}}
        response = self.http.post("/v2.0/auth_tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["auth_token"]["token"])


def over_quota(response: httpx.Response, quota: str, limit: int) -> str:
    assert response.status_code == 409, response.text
    error = response.json()["NeutronError"]
    assert error["type"] == "OverQuota"
    assert error["detail"] == ""
    message: str = error["message"]
    assert message.startswith(NEUTRON_MESSAGE)
    assert f"The limit is {limit} conntrack helpers" in message
    assert f"({quota})" in message
    return message


def test_creates_past_a_quota_are_409_over_quota_and_store_nothing(server: ServerProcess) -> None:
    admin = Client(server, server.admin_token)
    member = Client(server, admin.token("p1", "member"))
    first, second = admin.router("p1", "first"), admin.router("p1", "second")

    assert [member.bind(first, port).status_code for port in (21, 22)] == [201, 201]
    message = over_quota(member.bind(first, 23), "quota_bindings_per_router", 2)
    assert first in message
    # An admin is held to the project's quota too (Neutron's quotas count the resource's project).
    over_quota(admin.bind(first, 24), "quota_bindings_per_router", 2)
    assert sorted(b["port"] for b in member.bindings(first)) == [21, 22]

    assert member.bind(second, 21).status_code == 201  # 3 in project p1: its limit
    message = over_quota(member.bind(second, 22), "quota_bindings_per_project", 3)
    assert "project p1" in message
    assert [b["port"] for b in member.bindings(second)] == [21]

    # An update never moves a binding to another router or project: allowed at the limit.
    moved = member.bindings(first)[0]
    url = f"/v2.0/routers/{first}/conntrack_helpers/{moved['id']}"
    changed = member.http.put(url, json={"conntrack_helper": {"port": 2121}})
    assert changed.status_code == 200, changed.text
    # A delete makes room again.
    assert member.http.delete(url).status_code == 204
    assert member.bind(second, 22).status_code == 201

    # Another project has its own count; "big" has its own limits.
    other = admin.router("p2")
    assert [admin.bind(other, port).status_code for port in (21, 22)] == [201, 201]
    big = admin.router("big")
    assert [admin.bind(big, port).status_code for port in range(21, 25)] == [201] * 4
    over_quota(admin.bind(big, 25), "quota_bindings_per_router", 4)


def race(client: Client, targets: list[tuple[str, int]]) -> Counter[int]:
    """One create per (router, port), all released at once; the statuses counted."""
    barrier = threading.Barrier(len(targets), timeout=30)
    statuses: list[int] = []
    lock = threading.Lock()

    def create(router_id: str, port: int) -> None:
        with httpx.Client(base_url=str(client.http.base_url), headers=client.http.headers) as own:
            barrier.wait()
            body = {"conntrack_helper": {"protocol": "tcp", "port": port, "helper": "ftp"}}
            response = own.post(f"/v2.0/routers/{router_id}/conntrack_helpers", json=body)
            if response.status_code == 409:
                assert response.json()["NeutronError"]["type"] == "OverQuota", response.text
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=create, args=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return Counter(statuses)


def test_concurrent_creates_at_the_limit_cannot_both_succeed(server: ServerProcess) -> None:
    admin = Client(server, server.admin_token)
    member = Client(server, admin.token("p1", "member"))
    # Per router: one free place on `first`, many creates for it at once.
    first = admin.router("p1", "first")
    assert member.bind(first, 21).status_code == 201
    statuses = race(member, [(first, 1000 + n) for n in range(THREADS)])
    assert statuses == Counter({201: 1, 409: THREADS - 1})
    assert len(member.bindings(first)) == 2

    # Per project: one free place in p1 (2 of 3 used), creates on two routers at once.
    second, third = admin.router("p1", "second"), admin.router("p1", "third")
    targets = [(second if n % 2 else third, 2000 + n) for n in range(THREADS)]
    statuses = race(member, targets)
    assert statuses == Counter({201: 1, 409: THREADS - 1})
    assert len(member.bindings(second)) + len(member.bindings(third)) == 1


def test_the_cli_prints_the_quota_message_and_exits_1(server: ServerProcess) -> None:
    admin = Client(server, server.admin_token)
    router_id = admin.router("p1")
    assert [admin.bind(router_id, port).status_code for port in (21, 22)] == [201, 201]
    env = clean_env(CTHM_URL=server.url, CTHM_TOKEN=server.admin_token)
    args = ["helper", "create", router_id, "--protocol", "tcp", "--port", "23", "--helper", "ftp"]
    result = subprocess.run(
        [str(CTHM), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ")
    assert NEUTRON_MESSAGE in line
    assert "The limit is 2 conntrack helpers per router (quota_bindings_per_router)" in line


def test_quota_settings_from_toml_with_per_project_overrides(tmp_path: Path) -> None:
    config = tmp_path / "cthm.toml"
    config.write_text(
        "quota_bindings_per_project = 50\n"
        "quota_bindings_per_router = -1\n"
        "[quotas.small]\n"
        "bindings_per_router = 5\n"
        "[quotas.free]\n"
        "bindings_per_project = -1\n",
        encoding="utf-8",
    )
    settings = load_settings(config, data_dir=tmp_path)
    assert settings.binding_quota("anyone") == BindingQuota(per_project=50, per_router=UNLIMITED)
    assert settings.binding_quota("small") == BindingQuota(per_project=50, per_router=5)
    assert settings.binding_quota("free").unlimited
    # Defaults without configuration: bounded.
    assert load_settings(None, data_dir=tmp_path).binding_quota("x") == BindingQuota(1000, 100)

    config.write_text("[quotas.p]\nbindings_per_router = -2\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="greater than or equal to -1"):
        load_settings(config, data_dir=tmp_path)
    config.write_text("[quotas.p]\nbindings = 3\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="bindings"):
        load_settings(config, data_dir=tmp_path)
