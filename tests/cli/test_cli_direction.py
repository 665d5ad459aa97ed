"""`cthm helper ... --direction` and the Direction column, through the real command against a
real `cthm serve`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cthm_cli_harness import Result, assert_error

Cthm = Callable[..., Result]
CREATE_FTP = ("--protocol", "tcp", "--port", "21", "--helper", "ftp")


@pytest.fixture
def router(cthm: Cthm, project: str) -> dict[str, Any]:
    body = cthm("router", "create", f"d-{project}", "--project", project, "--json").json()
    router: dict[str, Any] = body["router"]
    return router


def _row(table: Result, binding_id: str) -> list[str]:
    assert table.returncode == 0, table
    return next(line.split() for line in table.stdout.splitlines() if binding_id in line)


def test_create_output_then_show_list_and_update(cthm: Cthm, router: dict[str, Any]) -> None:
    rid = router["id"]
    ingress = cthm("helper", "create", rid, *CREATE_FTP, "--json").json()["conntrack_helper"]
    output = cthm(
        "helper", "create", router["name"], *CREATE_FTP, "--direction", "output", "--json"
    ).json()["conntrack_helper"]
    assert ingress["direction"] == "ingress"  # the default
    assert output["direction"] == "output"
    assert (output["protocol"], output["port"], output["helper"]) == ("tcp", 21, "ftp")

    shown = cthm("helper", "show", rid, output["id"], "--json").json()["conntrack_helper"]
    assert shown["direction"] == "output"
    table = cthm("helper", "show", rid, output["id"])
    fields = {
        row[0]: row[1:] for row in (line.split() for line in table.stdout.splitlines()) if row
    }
    assert fields["direction"] == ["output"]

    listing = cthm("helper", "list", rid)
    header = next(line.split() for line in listing.stdout.splitlines() if "Direction" in line)
    assert header[:5] == ["ID", "Protocol", "Port", "Helper", "Direction"]
    assert _row(listing, ingress["id"])[:5] == [ingress["id"], "tcp", "21", "ftp", "ingress"]
    assert _row(listing, output["id"])[:5] == [output["id"], "tcp", "21", "ftp", "output"]
    in_router = cthm("router", "show", rid)
    assert _row(in_router, output["id"])[:5] == [output["id"], "tcp", "21", "ftp", "output"]

    # A second output tcp/21 is a conflict naming the output binding; an update can move it.
    assert_error(
        cthm("helper", "create", rid, *CREATE_FTP, "--direction", "output"),
        1,
        output["id"],
        "output tcp/21",
    )
    moved = cthm(
        "helper", "update", rid, output["id"], "--port", "2121", "--direction", "ingress", "--json"
    ).json()["conntrack_helper"]
    assert (moved["port"], moved["direction"]) == (2121, "ingress")
    only_direction = cthm(
        "helper", "update", rid, output["id"], "--direction", "output", "--json"
    ).json()["conntrack_helper"]
    assert (only_direction["port"], only_direction["direction"]) == (2121, "output")


def test_direction_choices_are_checked_before_any_request(
    cthm: Cthm, router: dict[str, Any]
) -> None:
    assert_error(
        cthm("helper", "create", router["id"], *CREATE_FTP, "--direction", "sideways"),
        2,
        "--direction",
        "sideways",
    )
    assert cthm("helper", "list", router["id"], "--json").json() == {"conntrack_helpers": []}
    help_text = cthm("helper", "create", "--help").stdout
    assert "--direction [ingress|output]" in help_text
    assert "default: ingress" in help_text
