"""`cthm helper ...` and `cthm catalog` through the real command against a real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cthm_cli_harness import Result, assert_error

Cthm = Callable[..., Result]


@pytest.fixture
def router(cthm: Cthm, project: str) -> dict[str, Any]:
    body = cthm("router", "create", f"r-{project}", "--project", project, "--json").json()
    router: dict[str, Any] = body["router"]
    return router


def _create_helper(cthm: Cthm, router_ref: str, protocol: str, port: int, helper: str) -> Any:
    result = cthm(
        "helper", "create", router_ref, "--protocol", protocol, "--port", str(port),
        "--helper", helper, "--json",
    )  # fmt: skip
    return result.json()["conntrack_helper"]


def test_helper_round_trip(cthm: Cthm, router: dict[str, Any]) -> None:
    binding = _create_helper(cthm, router["name"], "tcp", 21, "ftp")  # by router name
    assert (binding["protocol"], binding["port"], binding["helper"]) == ("tcp", 21, "ftp")
    assert binding["router_id"] == router["id"]
    assert binding["project_id"] == router["project_id"]

    listed = cthm("helper", "list", router["id"], "--json").json()["conntrack_helpers"]
    assert [b["id"] for b in listed] == [binding["id"]]
    table = cthm("helper", "list", router["name"])
    assert table.returncode == 0, table
    row = next(line.split() for line in table.stdout.splitlines() if binding["id"] in line)
    assert row[:4] == [binding["id"], "tcp", "21", "ftp"]

    shown = cthm("helper", "show", router["name"], binding["id"], "--json").json()
    assert shown["conntrack_helper"]["id"] == binding["id"]
    in_router = cthm("router", "show", router["id"], "--json").json()["router"]
    assert [h["id"] for h in in_router["conntrack_helpers"]] == [binding["id"]]

    moved = cthm("helper", "update", router["id"], binding["id"], "--port", "2121", "--json")
    moved_body = moved.json()["conntrack_helper"]
    assert (moved_body["protocol"], moved_body["port"], moved_body["helper"]) == (
        "tcp",
        2121,
        "ftp",
    )
    assert moved_body["revision_number"] > binding["revision_number"]

    swapped = cthm(
        "--json", "helper", "update", router["id"], binding["id"],
        "--protocol", "udp", "--port", "69", "--helper", "tftp",
    ).json()["conntrack_helper"]  # fmt: skip
    assert (swapped["protocol"], swapped["port"], swapped["helper"]) == ("udp", 69, "tftp")

    deleted = cthm("helper", "delete", router["name"], binding["id"])
    assert deleted.returncode == 0, deleted
    assert f"Deleted conntrack helper {binding['id']}" in deleted.stdout
    assert cthm("helper", "list", router["id"], "--json").json() == {"conntrack_helpers": []}
    assert_error(cthm("helper", "show", router["id"], binding["id"]), 1, binding["id"])


def test_helper_tables_for_people(cthm: Cthm, router: dict[str, Any]) -> None:
    created = cthm(
        "helper", "create", router["id"], "--protocol", "udp", "--port", "69", "--helper", "tftp"
    )
    assert created.returncode == 0, created
    rows = [line.split() for line in created.stdout.splitlines() if line.strip()]
    fields = {row[0]: row[1:] for row in rows}
    assert fields["protocol"] == ["udp"]
    assert fields["port"] == ["69"]
    assert fields["helper"] == ["tftp"]
    assert fields["router_id"] == [router["id"]]
    shown = cthm("router", "show", router["name"])
    assert "Conntrack helpers (1)" in shown.stdout
    assert fields["id"][0] in shown.stdout


def test_port_must_be_an_integer(cthm: Cthm, router: dict[str, Any]) -> None:
    args = ("helper", "create", router["id"], "--protocol", "tcp", "--helper", "ftp", "--port")
    assert_error(cthm(*args, "abc"), 2, "--port", "abc")
    assert_error(cthm(*args, "21.5"), 2, "--port")


@pytest.mark.parametrize("port", ["0", "-1", "65536", "99999999999"])
def test_port_range_is_judged_by_the_server(cthm: Cthm, router: dict[str, Any], port: str) -> None:
    args = ("helper", "create", router["id"], "--protocol", "tcp", "--helper", "ftp", "--port")
    assert_error(cthm(*args, port), 1, "port")
    assert cthm("helper", "list", router["id"], "--json").json() == {"conntrack_helpers": []}


@pytest.mark.parametrize(
    ("protocol", "helper", "fragment"),
    [
        ("udp", "ftp", "does not support udp"),
        ("tcp", "amanda", "only udp"),
        ("tcp", "h323x", "unknown helper"),
        ("sctp", "ftp", "protocol"),
        ("tcp", "ftp; rm -rf /", "unknown helper"),
    ],
)
def test_bad_helper_and_protocol_pairs_are_refused(
    cthm: Cthm, router: dict[str, Any], protocol: str, helper: str, fragment: str
) -> None:
    result = cthm(
        "helper", "create", router["id"], "--protocol", protocol, "--port", "21", "--helper", helper
    )
    assert_error(result, 1, fragment)


def test_a_duplicate_protocol_and_port_is_a_conflict_naming_the_binding(
    cthm: Cthm, router: dict[str, Any]
) -> None:
    first = _create_helper(cthm, router["id"], "tcp", 21, "ftp")
    duplicate = cthm(
        "helper", "create", router["id"], "--protocol", "tcp", "--port", "21", "--helper", "sip"
    )
    assert_error(duplicate, 1, first["id"])
    listed = cthm("helper", "list", router["id"], "--json").json()["conntrack_helpers"]
    assert [(b["id"], b["helper"]) for b in listed] == [(first["id"], "ftp")]
    # moving another binding onto the taken port is the same conflict
    other = _create_helper(cthm, router["id"], "tcp", 5060, "sip")
    assert_error(
        cthm("helper", "update", router["id"], other["id"], "--port", "21"), 1, first["id"]
    )


def test_unknown_router_or_helper_is_one_line(cthm: Cthm, router: dict[str, Any]) -> None:
    missing = f"nowhere-{uuid.uuid4().hex}"
    create = ("--protocol", "tcp", "--port", "21", "--helper", "ftp")
    assert_error(cthm("helper", "create", missing, *create), 1, missing)
    assert_error(cthm("helper", "list", missing), 1, missing)
    unknown = str(uuid.uuid4())
    assert_error(cthm("helper", "show", router["id"], unknown), 1, unknown)
    assert_error(cthm("helper", "delete", router["id"], unknown), 1, unknown)
    # path tricks stay inside the helper's id: no other resource is read
    for trick in ("..", ".", "../..", "x/../.."):
        assert_error(cthm("helper", "show", router["id"], trick), 1)


def test_a_helper_of_another_router_is_not_found_there(cthm: Cthm, project: str) -> None:
    owner = cthm("router", "create", f"own-{project}", "--project", project, "--json").json()
    stranger = cthm("router", "create", f"other-{project}", "--project", project, "--json").json()
    owner_id, stranger_id = owner["router"]["id"], stranger["router"]["id"]
    binding = _create_helper(cthm, owner_id, "tcp", 21, "ftp")
    assert_error(cthm("helper", "show", stranger_id, binding["id"]), 1, binding["id"])
    assert_error(cthm("helper", "update", stranger_id, binding["id"], "--port", "22"), 1)
    assert_error(cthm("helper", "delete", stranger_id, binding["id"]), 1)
    kept = cthm("helper", "show", owner_id, binding["id"], "--json").json()["conntrack_helper"]
    assert kept["port"] == 21


def test_update_needs_a_change(cthm: Cthm, router: dict[str, Any]) -> None:
    binding = _create_helper(cthm, router["id"], "tcp", 21, "ftp")
    assert_error(cthm("helper", "update", router["id"], binding["id"]), 2, "nothing to update")
    assert_error(cthm("helper", "create", router["id"], "--port", "21"), 2, "--")


def test_catalog_table_and_json(cthm: Cthm) -> None:
    table = cthm("catalog")
    assert table.returncode == 0, table
    for helper in ("ftp", "tftp", "sip", "h323", "Q.931"):
        assert helper in table.stdout
    body = cthm("catalog", "--json").json()
    assert isinstance(body, dict)
    assert '"ftp"' in cthm("--json", "catalog").stdout
