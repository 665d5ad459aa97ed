"""Alembic environment: runs on the connection the Store hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from cthm.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the Store runs migrations
    raise RuntimeError("cthm migrations run through cthm.store.Store.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
    compare_type=True,
    # One transaction for the whole run (SQLite's DDL is transactional): a migration that
    # refuses (a downgrade that would lose data) leaves the database as it was, not part-way.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
