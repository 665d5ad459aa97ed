"""Several hosts: the change feed node agents watch, the agents and the namespaces their hosts
report (placement), each host's reports on routers and bindings, each host's pending table
removals, and agent tokens limited to one host.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from cthm.store.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_log",
        sa.Column("revision", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("router_id", sa.String(36), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("time", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("revision", name="pk_change_log"),
        # AUTOINCREMENT: a revision is never given twice, even after pruning every older row.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_change_log_namespace_revision", "change_log", ["namespace", "revision"])
    op.create_table(
        "agents",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("configurations", sa.JSON(), nullable=False),
        sa.Column("registered_by", sa.String(36), nullable=True),
        sa.Column("alive_noted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agents"),
        sa.UniqueConstraint("host", name="uq_agents_host"),
    )
    op.create_table(
        "agent_namespaces",
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("host", "namespace", name="pk_agent_namespaces"),
    )
    op.create_index("ix_agent_namespaces_namespace", "agent_namespaces", ["namespace"])
    op.create_table(
        "router_hosts",
        sa.Column("router_id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("status_reason", sa.String(1024), nullable=False),
        sa.Column("kernel", sa.JSON(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["router_id"],
            ["routers.id"],
            name="fk_router_hosts_router_id_routers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("router_id", "host", name="pk_router_hosts"),
    )
    op.create_index("ix_router_hosts_host", "router_hosts", ["host"])
    op.create_table(
        "binding_hosts",
        sa.Column("binding_id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("router_id", sa.String(36), nullable=False),
        sa.Column("revision_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.String(1024), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["binding_id"],
            ["conntrack_helpers.id"],
            name="fk_binding_hosts_binding_id_conntrack_helpers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("binding_id", "host", name="pk_binding_hosts"),
    )
    op.create_index("ix_binding_hosts_router_id_host", "binding_hosts", ["router_id", "host"])
    op.create_table(
        "tombstone_hosts",
        sa.Column("router_id", sa.String(36), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("router_id", "host", name="pk_tombstone_hosts"),
    )
    op.create_index("ix_tombstone_hosts_host", "tombstone_hosts", ["host"])
    with op.batch_alter_table("auth_tokens") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))


def downgrade() -> None:
    # A token limited to one host would act for every host once the column is gone: refuse
    # rather than widen it (revoked ones no longer act and may go).
    count = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM auth_tokens WHERE host IS NOT NULL AND revoked_at IS NULL")
    )
    if count:
        raise RuntimeError(
            f"cannot downgrade below 0006: {count} unrevoked agent token(s) are limited to one "
            "host; revoke them"
        )
    with op.batch_alter_table("auth_tokens") as batch:
        batch.drop_column("host")
    op.drop_index("ix_tombstone_hosts_host", table_name="tombstone_hosts")
    op.drop_table("tombstone_hosts")
    op.drop_index("ix_binding_hosts_router_id_host", table_name="binding_hosts")
    op.drop_table("binding_hosts")
    op.drop_index("ix_router_hosts_host", table_name="router_hosts")
    op.drop_table("router_hosts")
    op.drop_index("ix_agent_namespaces_namespace", table_name="agent_namespaces")
    op.drop_table("agent_namespaces")
    op.drop_table("agents")
    op.drop_index("ix_change_log_namespace_revision", table_name="change_log")
    op.drop_table("change_log")
