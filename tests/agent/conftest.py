"""Agent fixtures (shared code lives in agent_support)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import world

from cthm.store import Store

__all__ = ["db", "world"]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A migrated SQLite store and its file (for tests that look at the file itself)."""
    path = tmp_path / "cthm.db"
    store = Store(f"sqlite:///{path}")
    store.migrate()
    try:
        yield store, path
    finally:
        store.close()
