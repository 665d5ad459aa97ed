"""`cthm router ...` through the real command against a real server."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable

import pytest
from cthm_cli_harness import Result, ServerProcess, assert_error, run

from cthm.testing import NamespaceFactory

Cthm = Callable[..., Result]


def _create(cthm: Cthm, name: str, project: str, *extra: str) -> dict[str, object]:
    router: dict[str, object] = cthm(
        "router", "create", name, "--project", project, *extra, "--json"
    ).json()["router"]
    return router


def _line_with(text: str, needle: str) -> str:
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, (needle, text)
    return lines[0]


def test_router_round_trip_with_json(cthm: Cthm, project: str) -> None:
    name = f"edge-{project}"
    router = _create(cthm, name, project)
    assert router["name"] == name
    assert router["project_id"] == project
    assert router["namespace"] == f"qrouter-{router['id']}"
    assert router["conntrack_helpers"] == []

    by_id = cthm("router", "show", str(router["id"]), "--json").json()["router"]
    by_name = cthm("router", "show", name, "--json").json()["router"]
    assert by_id["id"] == by_name["id"] == router["id"]
    assert by_id["revision_number"] == router["revision_number"]

    # --json works before the command (global) as well as after it
    listed = cthm("--json", "router", "list", "--project", project).json()
    assert [r["id"] for r in listed["routers"]] == [router["id"]]

    renamed = cthm("router", "update", name, "--name", f"{name}-2", "--json").json()["router"]
    assert renamed["id"] == router["id"]
    assert renamed["name"] == f"{name}-2"
    assert renamed["revision_number"] > router["revision_number"]

    deleted = cthm("router", "delete", f"{name}-2")
    assert deleted.returncode == 0, deleted
    assert f"Deleted router {router['id']}" in deleted.stdout

    assert_error(cthm("router", "show", str(router["id"])), 1, str(router["id"]))
    assert cthm("router", "list", "--project", project, "--json").json() == {"routers": []}


def test_router_tables_for_people(cthm: Cthm, project: str) -> None:
    name = f"table-{project}"
    namespace = f"cthm-cli-{uuid.uuid4().hex[:12]}"
    created = cthm("router", "create", name, "--project", project, "--namespace", namespace)
    assert created.returncode == 0, created
    assert _line_with(created.stdout, "namespace").split()[-1] == namespace
    router_id = _line_with(created.stdout, " id ").split()[-1]

    listed = cthm("router", "list", "--project", project)
    assert listed.returncode == 0, listed
    row = _line_with(listed.stdout, router_id).split()
    assert row == [router_id, name, project, namespace, row[4], "0"]

    shown = cthm("router", "show", router_id)
    assert _line_with(shown.stdout, "project_id").split()[-1] == project
    assert "Conntrack helpers (0)" in shown.stdout


def test_values_are_shown_verbatim_not_as_markup(cthm: Cthm, project: str) -> None:
    name = f"[bold red]x[/] $(id); {project}"
    router = _create(cthm, name, project)
    shown = cthm("router", "show", str(router["id"]))
    assert shown.returncode == 0, shown
    assert name in shown.stdout
    assert "\x1b[" not in shown.stdout  # no terminal escapes when writing to a pipe


def test_a_name_shared_by_two_routers_is_refused_with_both_ids(cthm: Cthm, project: str) -> None:
    name = f"twin-{project}"
    first = _create(cthm, name, project)
    second = _create(cthm, name, project)
    line = assert_error(
        cthm("router", "show", name), 1, "2 routers are named", "give the router id"
    )
    assert str(first["id"]) in line
    assert str(second["id"]) in line
    assert_error(cthm("router", "delete", name), 1, "2 routers are named")
    listed = cthm("router", "list", "--project", project, "--json").json()["routers"]
    assert len(listed) == 2  # nothing was deleted
    assert cthm("router", "show", str(second["id"]), "--json").json()["router"]["name"] == name


def test_an_id_wins_over_a_name_and_a_uuid_like_name_still_resolves(
    cthm: Cthm, project: str
) -> None:
    target = _create(cthm, f"target-{project}", project)
    impostor = _create(cthm, str(target["id"]), project)  # named like the other router's id
    assert (
        cthm("router", "show", str(target["id"]), "--json").json()["router"]["id"] == target["id"]
    )

    unused_id = str(uuid.uuid4())
    named = _create(cthm, unused_id, project)
    assert cthm("router", "show", unused_id, "--json").json()["router"]["id"] == named["id"]
    assert impostor["id"] != target["id"]


def test_unknown_routers_are_one_line_errors(cthm: Cthm) -> None:
    missing = f"no-such-router-{uuid.uuid4().hex}"
    assert_error(cthm("router", "show", missing), 1, "no router has the id or name", missing)
    assert_error(cthm("router", "update", missing, "--name", "x"), 1, missing)
    assert_error(cthm("router", "delete", missing), 1, missing)
    random_id = str(uuid.uuid4())
    assert_error(cthm("router", "show", random_id), 1, random_id)


def test_invalid_input_is_the_servers_message_in_one_line(cthm: Cthm, project: str) -> None:
    assert_error(cthm("router", "create", "r", "--project", "bad project!"), 1, "project_id")
    assert_error(
        cthm("router", "create", "r", "--project", project, "--namespace", "-rf"), 1, "namespace"
    )
    assert_error(cthm("router", "create", "r", "--project", project, "--namespace", "a\nb"), 1)
    assert_error(cthm("router", "create", "x" * 300, "--project", project), 1, "name")


def test_a_namespace_in_use_is_a_conflict(cthm: Cthm, project: str) -> None:
    namespace = f"cthm-cli-{uuid.uuid4().hex[:12]}"
    first = _create(cthm, f"a-{project}", project, "--namespace", namespace)
    line = assert_error(
        cthm("router", "create", f"b-{project}", "--project", project, "--namespace", namespace),
        1,
        namespace,
    )
    assert str(first["id"]) in line
    listed = cthm("router", "list", "--project", project, "--json").json()["routers"]
    assert [r["id"] for r in listed] == [first["id"]]


def test_usage_errors_exit_2_in_one_line(cthm: Cthm) -> None:
    assert_error(cthm("router", "create", "r"), 2, "--project")
    assert_error(cthm("router", "update", "r"), 2, "--name")
    assert_error(cthm("router", "frobnicate"), 2, "frobnicate")
    assert_error(cthm("router", "list", "--bogus"), 2, "--bogus")


def test_router_create_with_id(cthm: Cthm, project: str, server: ServerProcess) -> None:
    """Adoption from Neutron: an admin registers a router under Neutron's id, so its default
    namespace is the L3 agent's qrouter-<id>."""
    router_id = str(uuid.uuid4())
    router = _create(cthm, f"adopted-{project}", project, "--id", router_id)
    assert (router["id"], router["namespace"]) == (router_id, f"qrouter-{router_id}")
    assert cthm("router", "show", router_id, "--json").json()["router"]["id"] == router_id

    again = cthm("router", "create", "x", "--project", project, "--id", router_id)
    assert_error(again, 1, f"Router {router_id} already exists")
    assert_error(
        cthm("router", "create", "x", "--project", project, "--id", "not-a-uuid"),
        1,
        "not a valid UUID",
    )
    member = cthm("token", "create", "--project", project, "--role", "member", "--json").json()
    as_member = run(
        "router", "create", "x", "--project", project, "--id", str(uuid.uuid4()),
        url=server.url, token=member["auth_token"]["token"],
    )  # fmt: skip
    assert_error(as_member, 1, "only an admin may choose a router's id")
    listed = cthm("router", "list", "--project", project, "--json").json()["routers"]
    assert [r["id"] for r in listed] == [router_id]


@pytest.mark.kernel
def test_router_created_with_id_is_applied_in_that_qrouter_namespace(
    cthm: Cthm, netns: NamespaceFactory, project: str
) -> None:
    """The point of --id: Neutron's L3 agent made qrouter-<id>; registered under that id, the
    router's default namespace is that one, and the agent programs it. (`netns`: skipped where
    namespaces cannot be made.)"""
    router_id = str(uuid.uuid4())
    # Named as Neutron names it: not the suite's prefix, but unique (a fresh uuid) and deleted
    # by exactly that name.
    neutron = NamespaceFactory(prefix="qrouter-")
    try:
        namespace = neutron.create(router_id)
        _create(cthm, f"adopted-{project}", project, "--id", router_id)
        created = cthm(
            "helper", "create", router_id, "--protocol", "tcp", "--port", "21", "--helper", "ftp",
            "--wait", "--json",
        )  # fmt: skip
        assert created.json()["conntrack_helper"]["status"] == "ACTIVE", created
        table = subprocess.run(
            ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "cthm"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        assert "ct helper ftp-tcp" in table, table  # the helper object, whatever the layout
        assert "21" in table, table
        assert cthm("router", "delete", router_id).returncode == 0
    finally:
        assert neutron.cleanup() == []
