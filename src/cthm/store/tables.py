"""SQLAlchemy tables. Portable types only (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# What the database accepts, spelled out: a new domain Direction needs a migration, and a test
# holds these equal to the enum.
DEFAULT_DIRECTION = "ingress"
DIRECTION_CHECK = "direction IN ('ingress', 'output')"


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns timezone-aware UTC datetimes on every backend (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class RouterRow(Base):
    __tablename__ = "routers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    project_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    namespace: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    revision_number: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class BindingRow(Base):
    __tablename__ = "conntrack_helpers"
    __table_args__ = (
        # One helper per connection: ingress and output hooks see different connections.
        UniqueConstraint("router_id", "protocol", "port", "direction"),
        CheckConstraint(DIRECTION_CHECK, name="ck_conntrack_helpers_direction"),
        Index("ix_conntrack_helpers_project_id", "project_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    router_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("routers.id", ondelete="CASCADE"), nullable=False
    )
    project_id: Mapped[str] = mapped_column(String(64), nullable=False)
    protocol: Mapped[str] = mapped_column(String(8), nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    helper: Mapped[str] = mapped_column(String(32), nullable=False)
    direction: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default=DEFAULT_DIRECTION
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    revision_number: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class RouterTombstoneRow(Base):
    """A deleted router whose kernel table an agent has not yet removed."""

    __tablename__ = "router_tombstones"

    router_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64), nullable=False)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class DeploymentRow(Base):
    """This database's deployment identity: one row (singleton = 1), made by migration 0005 or,
    if missing, at first use (store/deployment.py). Every table or chain cthm writes into the
    kernel carries it, so a deployment never takes another one's kernel state for its own."""

    __tablename__ = "deployment"
    __table_args__ = (CheckConstraint("singleton = 1", name="ck_deployment_singleton"),)

    singleton: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    deployment_id: Mapped[str] = mapped_column(String(36), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class TokenRow(Base):
    """An API token. Only a hash of the secret is stored; the secret is shown once at creation."""

    __tablename__ = "auth_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    roles: Mapped[str] = mapped_column(String(255), nullable=False)  # space-separated, sorted
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    description: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # An agent token limited to one host: it may act only for that host (None: any host).
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)


class AuditEventRow(Base):
    """One change or denied attempt, written in the same transaction as the change itself."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_time", "time"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    request_id: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    token_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the caller's
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target_type: Mapped[str] = mapped_column(String(32), nullable=False)
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target_project_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)  # success|denied|failed
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    before: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    after: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[str] = mapped_column(String(1024), nullable=False, default="")


class ChangeLogRow(Base):
    """The change feed: one row per router per unit of work that changed its desired state.
    Revisions are never reused (AUTOINCREMENT), even once older rows are pruned."""

    __tablename__ = "change_log"
    __table_args__ = (
        Index("ix_change_log_namespace_revision", "namespace", "revision"),
        {"sqlite_autoincrement": True},
    )

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    router_id: Mapped[str] = mapped_column(String(36), nullable=False)
    namespace: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # MODIFIED | DELETED | RESYNC
    time: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class AgentRow(Base):
    """A node agent (one per host), registered and kept alive by its reports."""

    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    configurations: Mapped[Any] = mapped_column(JSON, nullable=False)
    registered_by: Mapped[str | None] = mapped_column(String(36), nullable=True)  # token id
    # Liveness as refresh_liveness last saw it: a flip recomputes the statuses of its routers.
    alive_noted: Mapped[bool] = mapped_column(Boolean, nullable=False)


class AgentNamespaceRow(Base):
    """A namespace a host's agent reports: routers in it are placed on that host."""

    __tablename__ = "agent_namespaces"
    __table_args__ = (Index("ix_agent_namespaces_namespace", "namespace"),)

    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(64), primary_key=True)


class RouterHostRow(Base):
    """One host's last report on a router (revision_number None: only a kernel summary yet)."""

    __tablename__ = "router_hosts"
    __table_args__ = (Index("ix_router_hosts_host", "host"),)

    router_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("routers.id", ondelete="CASCADE"), primary_key=True
    )
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    revision_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status_reason: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    kernel: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class BindingHostRow(Base):
    """One host's last report on a binding."""

    __tablename__ = "binding_hosts"
    __table_args__ = (Index("ix_binding_hosts_router_id_host", "router_id", "host"),)

    binding_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("conntrack_helpers.id", ondelete="CASCADE"), primary_key=True
    )
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
    router_id: Mapped[str] = mapped_column(String(36), nullable=False)
    revision_number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    status_reason: Mapped[str] = mapped_column(String(1024), nullable=False, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)


class TombstoneHostRow(Base):
    """A deleted router whose kernel table this host has not yet removed (see
    RouterTombstoneRow: that row goes when the last of these does)."""

    __tablename__ = "tombstone_hosts"
    __table_args__ = (Index("ix_tombstone_hosts_host", "host"),)

    router_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), primary_key=True)
