"""Persistent desired state: SQLAlchemy tables, Alembic migrations, repository, unit of work."""

from cthm.domain import BINDING_FIELDS
from cthm.store.audit import AuditContext, AuditLog
from cthm.store.deployment import deployment_id
from cthm.store.hosts import HostRepository
from cthm.store.repository import ROUTER_FIELDS, Repository
from cthm.store.store import Store
from cthm.store.tokens import TokenStore

__all__ = [
    "BINDING_FIELDS",
    "ROUTER_FIELDS",
    "AuditContext",
    "AuditLog",
    "HostRepository",
    "Repository",
    "Store",
    "TokenStore",
    "deployment_id",
]
