"""Persistent desired state: SQLAlchemy tables, Alembic migrations, repository, unit of work."""

from cthm.store.repository import BINDING_FIELDS, ROUTER_FIELDS, Repository
from cthm.store.store import Store

__all__ = ["BINDING_FIELDS", "ROUTER_FIELDS", "Repository", "Store"]
