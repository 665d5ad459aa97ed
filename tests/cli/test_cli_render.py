"""`render.emit`, the one place every command decides between JSON for scripts and tables for
people: what reaches stdout in each mode."""

from __future__ import annotations

import json

import pytest

from cthm.cli import render
from cthm.cli.context import CliState

ROUTER = {"id": "r-1", "name": "[red]edge", "project_id": "demo", "status": "ACTIVE"}


def test_json_mode_prints_the_body_and_nothing_for_people(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.emit(CliState(json=True), {"router": ROUTER}, render.print_router, ROUTER)
    out = capsys.readouterr().out
    assert json.loads(out) == {"router": ROUTER}  # the whole of stdout is the JSON body


def test_people_get_the_view_and_no_json(capsys: pytest.CaptureFixture[str]) -> None:
    render.emit(CliState(json=False), {"router": ROUTER}, render.print_router, ROUTER)
    out = capsys.readouterr().out
    assert "[red]edge" in out  # shown as typed, never read as markup
    assert "ACTIVE" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_an_answer_without_a_body_prints_nothing_in_json_mode(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A delete under --json: scripts read the exit status; a 204 has no body to print."""
    render.emit(CliState(json=True), None, render.print_line, "Deleted router r-1")
    assert capsys.readouterr().out == ""
    render.emit(CliState(json=False), None, render.print_line, "Deleted router r-1")
    assert capsys.readouterr().out == "Deleted router r-1\n"
