"""What the store tests share beyond tests/store/conftest.py's fixtures: the catalog, the
fixtures' types, and a database made to refuse audit rows (the API's audit tests use it
too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cthm.domain import HelperBinding, HelperCatalog, Router
from support.databases import PlainSql

CATALOG = HelperCatalog()

Snapshot = dict[str, list[tuple[object, ...]]]  # the `snapshot` fixture: table -> sorted rows
MakeRouter = Callable[..., Router]
MakeBinding = Callable[..., HelperBinding]


def refuse_audit_inserts(database: Path | str) -> None:
    """Makes the database (an SQLite file, or a URL of either kind) refuse every audit row, as a
    constraint does: a trigger written by hand (sqlite3 / psycopg), not through the code under
    test. allow_audit_inserts() undoes it."""
    if isinstance(database, Path):
        database = f"sqlite:///{database}"
    run = PlainSql(database)
    if run.kind == "sqlite":
        run(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit insert refused'); END"
        )
        return
    # check_violation: an integrity error, as SQLite's RAISE(ABORT) is.
    run(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'audit insert refused' USING ERRCODE = 'check_violation'; END $$"
    )
    run(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
    )


def allow_audit_inserts(url: str) -> None:
    run = PlainSql(url)
    if run.kind == "sqlite":
        run("DROP TRIGGER refuse_audit")
    else:
        run("DROP TRIGGER refuse_audit ON audit_events")
