"""Routers, conntrack helper bindings and router tombstones.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cthm.store.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routers",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(1024), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_routers"),
        sa.UniqueConstraint("namespace", name="uq_routers_namespace"),
    )
    op.create_index("ix_routers_project_id", "routers", ["project_id"])
    op.create_table(
        "conntrack_helpers",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("router_id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("helper", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(1024), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["router_id"],
            ["routers.id"],
            name="fk_conntrack_helpers_router_id_routers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_conntrack_helpers"),
        sa.UniqueConstraint(
            "router_id", "protocol", "port", name="uq_conntrack_helpers_router_id_protocol_port"
        ),
    )
    op.create_index("ix_conntrack_helpers_project_id", "conntrack_helpers", ["project_id"])
    op.create_table(
        "router_tombstones",
        sa.Column("router_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("router_id", name="pk_router_tombstones"),
    )


def downgrade() -> None:
    op.drop_table("router_tombstones")
    op.drop_index("ix_conntrack_helpers_project_id", table_name="conntrack_helpers")
    op.drop_table("conntrack_helpers")
    op.drop_index("ix_routers_project_id", table_name="routers")
    op.drop_table("routers")
