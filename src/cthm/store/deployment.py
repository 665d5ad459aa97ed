"""The deployment identity: a uuid4 kept in the database (table `deployment`, one row), so every
process sharing one database (API replicas, agents on many hosts) is one deployment.

Migration 0005 makes the row. A database without it (the row deleted by hand) gets one at first
use: the insert is of the one allowed primary key, so of two processes racing to make it, one
wins and the other reads the winner's (SQLite and PostgreSQL alike). Once read it never changes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from cthm.domain import Conflict
from cthm.store.tables import DeploymentRow

if TYPE_CHECKING:
    from cthm.store.store import Store

_ATTEMPTS = 3


def read_deployment_id(session: Session) -> str | None:
    return session.scalar(select(DeploymentRow.deployment_id).where(DeploymentRow.singleton == 1))


def create_deployment_id(session: Session) -> str:
    """Adds the row (flushed: a concurrent one fails here, as IntegrityError)."""
    identity = str(uuid.uuid4())
    session.add(DeploymentRow(singleton=1, deployment_id=identity, created_at=datetime.now(UTC)))
    session.flush()
    return identity


def deployment_id(store: Store) -> str:
    """This database's deployment id, made if it is missing. Raises Unavailable like any read."""
    for _ in range(_ATTEMPTS):
        with store.unit_of_work(write=False) as repo:
            found = repo.deployment_id()
        if found is not None:
            return found
        try:
            with store.unit_of_work() as repo:
                return repo.deployment_id() or repo.create_deployment_id()
        except Conflict:
            continue  # another process made it between our read and our insert: read theirs
    raise Conflict("cannot read or create the deployment identity; retry")
