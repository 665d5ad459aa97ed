"""`cthm import neutron` (issue 16, adoption from Neutron) between two real `cthm serve`: one acts
as the Neutron API (it speaks it; openstacksdk reaches it through a clouds.yaml), the other is the
cthm the routers are registered in. Both run without an agent: only the API is under test.

The Neutron stand-in lives for the module, so it may hold other tests' routers too: a test
compares the target with everything Neutron holds, or looks only at its own routers."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openstack.connection import Connection
from osclients import CLOUD, clouds_yaml

from cthm.cli.client import CthmClient
from cthm.cli.neutron import (
    Action,
    NeutronHelper,
    NeutronRouter,
    Plan,
    Step,
    apply_plan,
    say_each,
)
from cthm.testing.service import CTHM, ServerProcess, clean_env, free_port

RUN_TIMEOUT = 60.0
Snapshot = dict[str, tuple[str, str, str, frozenset[tuple[str, int, str, str]]]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The Neutron API (this module's clouds.yaml, `conn`, point at it)."""
    base = tmp_path_factory.mktemp("neutron")
    with ServerProcess(base / "data", base / "logs", args=("--no-agent",)) as running:
        yield running


@pytest.fixture
def target(tmp_path: Path) -> Iterator[ServerProcess]:
    """The cthm the routers are imported into: a fresh one for every test."""
    with ServerProcess(tmp_path / "data", tmp_path / "logs", args=("--no-agent",)) as running:
        yield running


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def cthm_import(
    target: ServerProcess, clouds_file: Path, *args: str, token: str | None = None
) -> Result:
    """`cthm import neutron --cloud cthm ARGS...` against `target` (its admin token unless
    `token`), with only our clouds.yaml."""
    env = clean_env(
        CTHM_URL=target.url,
        CTHM_TOKEN=token or target.admin_token,
        OS_CLIENT_CONFIG_FILE=str(clouds_file),
    )
    for key in [k for k in env if k.startswith("OS_") and k != "OS_CLIENT_CONFIG_FILE"]:
        del env[key]
    done = subprocess.run(
        [str(CTHM), "import", "neutron", "--cloud", CLOUD, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Result(done.returncode, done.stdout, done.stderr)


def routers_of(server: ServerProcess) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/v2.0/routers", headers=server.auth_headers(), timeout=10)
    assert response.status_code == 200, response.text
    routers: list[dict[str, Any]] = response.json()["routers"]
    return routers


def snapshot(server: ServerProcess) -> Snapshot:
    """Router id -> name, project, namespace and helpers (protocol, port, helper, direction)."""
    return {
        r["id"]: (
            r["name"],
            r["project_id"],
            r["namespace"],
            frozenset(
                (h["protocol"], h["port"], h["helper"], h["direction"])
                for h in r["conntrack_helpers"]
            ),
        )
        for r in routers_of(server)
    }


def make_router(conn: Connection, project: str, *helpers: tuple[str, int, str]) -> str:
    router = conn.network.create_router(name=f"r-{uuid.uuid4().hex[:8]}", project_id=project)
    for protocol, port, helper in helpers:
        conn.network.create_conntrack_helper(router, protocol=protocol, port=port, helper=helper)
    router_id: str = router.id
    return router_id


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}{path}", json=body, headers=server.auth_headers(), timeout=10
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_dry_run_import_and_reimport(
    server: ServerProcess, conn: Connection, clouds_file: Path, target: ServerProcess
) -> None:
    edge = make_router(conn, "p1", ("tcp", 21, "ftp"), ("udp", 69, "tftp"))
    bare = make_router(conn, "p2")
    neutron = snapshot(server)
    assert {edge, bare} <= set(neutron)

    dry = cthm_import(target, clouds_file, "--dry-run")
    assert dry.returncode == 0, dry
    assert dry.stderr == ""  # not even the SDK's deprecation warnings
    assert f"create router {edge} (" in dry.stdout
    assert f"add helper tcp/21 ftp to router {edge} (" in dry.stdout
    assert f"add helper udp/69 tftp to router {edge} (" in dry.stdout
    assert f"create router {bare} (" in dry.stdout
    assert dry.stdout.rstrip().endswith("Dry run: nothing changed.")
    assert routers_of(target) == []

    done = cthm_import(target, clouds_file)
    assert done.returncode == 0, done
    # The plan is printed before anything is done.
    assert done.stdout.index(f"  create router {edge}") < done.stdout.index(
        f"done: create router {edge}"
    )
    # Same ids (so the namespaces are Neutron's qrouter-<id>), names, projects and helpers.
    assert snapshot(target) == neutron
    assert neutron[edge][2] == f"qrouter-{edge}"

    before = routers_of(target)
    again = cthm_import(target, clouds_file)
    assert again.returncode == 0, again
    assert "Nothing to do" in again.stdout
    assert f"skip router {edge} (" in again.stdout
    assert f"skip helper tcp/21 ftp on router {edge} (" in again.stdout
    assert routers_of(target) == before  # not even a revision or a timestamp moved

    # Only what Neutron gained since is added (--json: one object, every step's outcome).
    conn.network.create_conntrack_helper(bare, protocol="tcp", port=2121, helper="ftp")
    more = cthm_import(target, clouds_file, "--json")
    assert more.returncode == 0, more
    body = json.loads(more.stdout)["import"]
    assert (body["cloud"], body["dry_run"], body["neutron_routers"]) == (CLOUD, False, len(neutron))
    changed = [s for s in body["steps"] if s["outcome"] is not None]
    assert changed == [
        {
            "action": "add helper",
            "router": {"id": bare, "name": neutron[bare][0], "project_id": "p2"},
            "conntrack_helper": {"protocol": "tcp", "port": 2121, "helper": "ftp"},
            "reason": "",
            "outcome": "done",
            "detail": "",
        }
    ]
    assert {s["action"] for s in body["steps"]} == {"skip", "add helper"}
    assert snapshot(target) == snapshot(server)


def test_conflicts_are_left_as_they_are_and_fail_the_run(
    conn: Connection, clouds_file: Path, target: ServerProcess
) -> None:
    clash = make_router(conn, "p1", ("tcp", 21, "ftp"), ("udp", 69, "tftp"))
    squatted = make_router(conn, "p1")
    # The target has `clash` with another helper on tcp/21, and `squatted`'s namespace taken.
    post(target, "/v2.0/routers", {"router": {"id": clash, "name": "mine", "project_id": "p1"}})
    binding = {"conntrack_helper": {"protocol": "tcp", "port": 21, "helper": "sip"}}
    post(target, f"/v2.0/routers/{clash}/conntrack_helpers", binding)
    squatter = post(
        target,
        "/v2.0/routers",
        {"router": {"name": "other", "project_id": "p1", "namespace": f"qrouter-{squatted}"}},
    )["router"]["id"]

    result = cthm_import(target, clouds_file)
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        "Error: 2 conflicting item(s) left as they are in cthm (see above)"
    )
    assert f"conflict helper tcp/21 ftp on router {clash} (" in result.stdout
    assert "tcp/21 is bound to sip" in result.stdout
    assert f"already has namespace qrouter-{squatted}" in result.stdout
    mine = snapshot(target)
    # Left as they were; what did not clash is imported.
    assert mine[clash] == (
        "mine",
        "p1",
        f"qrouter-{clash}",
        frozenset({("tcp", 21, "sip", "ingress"), ("udp", 69, "tftp", "ingress")}),
    )
    assert squatted not in mine
    assert mine[squatter][2] == f"qrouter-{squatted}"


def test_a_non_admin_token_cannot_import(
    conn: Connection, clouds_file: Path, target: ServerProcess
) -> None:
    make_router(conn, "p1")
    member = post(
        target,
        "/v2.0/auth_tokens",
        {"auth_token": {"project_id": "p1", "roles": ["member"]}},
    )["auth_token"]["token"]
    result = cthm_import(target, clouds_file, token=member)
    assert result.returncode == 1, result
    assert "  create router " in result.stdout  # the plan, then the first refusal ends it
    assert "done:" not in result.stdout
    assert result.stderr.startswith("Error: only an admin may choose a router's id"), result
    assert len(result.stderr.splitlines()) == 1
    assert routers_of(target) == []


def _one_error(result: Result, exit_code: int, *fragments: str) -> None:
    assert result.returncode == exit_code, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_neutron_errors_are_one_line(
    server: ServerProcess, clouds_file: Path, target: ServerProcess, tmp_path: Path
) -> None:
    other = tmp_path / "clouds.yaml"

    def with_cloud(url: str, token: str) -> Result:
        other.write_text(clouds_yaml(url, token), encoding="utf-8")
        return cthm_import(target, other)

    unknown = cthm_import(target, clouds_file, "--cloud", "nowhere")
    _one_error(unknown, 2, "nowhere")

    refused = with_cloud(server.url, "not-a-valid-token")
    _one_error(refused, 1, f"Neutron of cloud '{CLOUD}' refused the credentials (HTTP 401)")

    down = with_cloud(f"http://127.0.0.1:{free_port()}", "x")
    _one_error(down, 3, f"cannot reach Neutron of cloud '{CLOUD}'")
    assert routers_of(target) == []


def test_a_failed_change_does_not_stop_the_others(target: ServerProcess) -> None:
    """apply_plan against a real cthm: a change the API refuses (400) is reported and skipped;
    a router that could not be created gets none of its helpers."""
    good = NeutronRouter(str(uuid.uuid4()), "good", "p1", ())
    bad = NeutronRouter(str(uuid.uuid4()), "bad\x07name", "p1", ())
    nosuch, ftp = NeutronHelper("tcp", 2121, "no-such-helper"), NeutronHelper("tcp", 21, "ftp")
    plan = Plan(
        (
            Step(Action.CREATE_ROUTER, good),
            Step(Action.ADD_HELPER, good, nosuch),
            Step(Action.ADD_HELPER, good, ftp),
            Step(Action.CREATE_ROUTER, bad),
            Step(Action.ADD_HELPER, bad, ftp),
        )
    )
    said: list[str] = []
    with CthmClient(target.url, token=target.admin_token) as client:
        assert apply_plan(client, plan, say_each(said.append)) == 3
    assert [line.split(":")[0] for line in said] == ["done", "failed", "done", "failed", "not done"]
    assert snapshot(target) == {
        good.id: ("good", "p1", f"qrouter-{good.id}", frozenset({("tcp", 21, "ftp", "ingress")}))
    }
