"""Output: rich tables for people, the JSON body for scripts.

Every value from the server is wrapped in `Text`, never parsed as rich markup: a router named
"[red]x" is shown as typed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cthm.cli.client import JSONObject
from cthm.cli.context import CliState

P = ParamSpec("P")

STATUS_STYLES = {"ACTIVE": "green", "ERROR": "bold red", "PENDING": "yellow"}
ROUTER_COLUMNS = (
    ("id", "ID"),
    ("name", "Name"),
    ("project_id", "Project"),
    ("namespace", "Namespace"),
    ("status", "Status"),
)
HELPER_COLUMNS = (
    ("id", "ID"),
    ("protocol", "Protocol"),
    ("port", "Port"),
    ("helper", "Helper"),
    ("direction", "Direction"),
    ("status", "Status"),
    ("status_reason", "Reason"),
)


def console() -> Console:
    # Off a terminal rich would wrap at 80 columns and split ids over lines; a pipe gets whole
    # lines instead.
    width = None if sys.stdout.isatty() else 4096
    return Console(width=width, highlight=False, soft_wrap=False)


def emit(
    state: CliState,
    body: JSONObject | None,
    view: Callable[P, None],
    *args: P.args,
    **kwargs: P.kwargs,
) -> None:
    """A command's answer: with --json the JSON body (nothing for an answer without one, as a
    delete's 204: scripts read the exit status), else `view(*args)` for people."""
    if not state.json:
        view(*args, **kwargs)
    elif body is not None:
        print_json(body)


def print_json(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_line(text: str) -> None:
    console().print(Text(text))


def cell(value: Any, key: str = "") -> Text:
    if value is None:
        return Text("")
    if isinstance(value, str):
        style = STATUS_STYLES.get(value, "") if key == "status" else ""
        return Text(value, style=style)
    if isinstance(value, bool | int | float):
        return Text(json.dumps(value))
    return Text(json.dumps(value, ensure_ascii=False, sort_keys=True))


def make_table(title: str | None, columns: Sequence[tuple[str, str]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for key, header in columns:
        # Ids are copied by people: never cut or folded.
        table.add_column(header, no_wrap=key.endswith("id"), overflow="fold")
    return table


def print_rows(
    rows: Iterable[JSONObject], columns: Sequence[tuple[str, str]], title: str | None = None
) -> None:
    table = make_table(title, columns)
    for row in rows:
        table.add_row(*(cell(row.get(key), key) for key, _ in columns))
    console().print(table)


def print_object(obj: JSONObject, title: str | None = None) -> None:
    """One object as Field/Value rows, in the server's field order."""
    table = make_table(title, (("field", "Field"), ("value", "Value")))
    for key, value in obj.items():
        table.add_row(Text(key), cell(value, key))
    console().print(table)


def print_router(router: JSONObject) -> None:
    helpers = router.get("conntrack_helpers")
    print_object({k: v for k, v in router.items() if k != "conntrack_helpers"})
    if isinstance(helpers, list):
        rows = [h for h in helpers if isinstance(h, dict)]
        columns = [c for c in HELPER_COLUMNS if any(c[0] in h for h in rows)] or HELPER_COLUMNS
        print_rows(rows, columns, title=f"Conntrack helpers ({len(rows)})")


CATALOG_COLUMNS = (
    ("helper", "Helper"),
    ("protocol", "Protocol"),
    ("kernel_helper", "Kernel helper"),
    ("default_port", "Usual port"),
    ("kernel_available", "In kernel"),
    ("ipv6", "IPv6"),
    ("high_risk", "High risk"),
    ("description", "Description"),
)


def print_catalog(body: JSONObject) -> None:
    entries = body.get("conntrack_helper_catalog")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        print_collection(body)  # a shape this CLI does not know: show it as it is
        return
    flags = ("kernel_available", "ipv6", "high_risk")
    rows = [{**e, **{k: _yes_no(e.get(k)) for k in flags}} for e in entries]
    print_rows(rows, CATALOG_COLUMNS, title="Conntrack helper catalog")


def print_routers(routers: list[JSONObject]) -> None:
    columns = (*ROUTER_COLUMNS, ("conntrack_helpers", "Helpers"))
    rows = [{**r, "conntrack_helpers": _count(r.get("conntrack_helpers"))} for r in routers]
    print_rows(rows, columns)


def print_helpers(helpers: list[JSONObject]) -> None:
    print_rows(helpers, HELPER_COLUMNS)


def print_collection(body: JSONObject) -> None:
    """A body whose list values are tables of objects (e.g. the catalog), shown generically."""
    shown = False
    for key, value in body.items():
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            columns: dict[str, str] = {}
            for item in value:
                columns.update({k: k.replace("_", " ").capitalize() for k in item})
            print_rows(value, list(columns.items()), title=key.replace("_", " ").capitalize())
            shown = True
    if not shown:
        print_object(body)


def _yes_no(value: Any) -> Any:
    if value is None:
        return "unknown"
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _count(value: Any) -> int | None:
    return len(value) if isinstance(value, list) else None
