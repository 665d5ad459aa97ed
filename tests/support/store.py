"""What the store tests share beyond tests/store/conftest.py's fixtures: the catalog, the
fixtures' types, and a database file made to refuse audit rows (the API's audit tests use it
too).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from cthm.domain import HelperBinding, HelperCatalog, Router

CATALOG = HelperCatalog()

Snapshot = dict[str, list[tuple[object, ...]]]  # the `snapshot` fixture: table -> sorted rows
MakeRouter = Callable[..., Router]
MakeBinding = Callable[..., HelperBinding]


def refuse_audit_inserts(db_path: Path) -> None:
    """Makes the SQLite file at `db_path` refuse every audit row (a trigger written with plain
    sqlite3, not through the code under test)."""
    connection = sqlite3.connect(db_path)
    try:
        connection.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit insert refused'); END"
        )
        connection.commit()
    finally:
        connection.close()
