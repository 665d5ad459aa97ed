"""SQLAlchemy tables. Portable types only (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
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
