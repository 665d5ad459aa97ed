"""Binding direction: a helper on connections entering the router (ingress, as before) or on
connections the router namespace itself originates (output). Existing rows become ingress, and
one router may bind a protocol/port once per direction.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Spelled out, not imported: a migration states the schema of its own revision.
OLD_UNIQUE = "uq_conntrack_helpers_router_id_protocol_port"
NEW_UNIQUE = "uq_conntrack_helpers_router_id_protocol_port_direction"
CHECK = "ck_conntrack_helpers_direction"


def upgrade() -> None:
    with op.batch_alter_table("conntrack_helpers") as batch:
        batch.add_column(
            sa.Column("direction", sa.String(16), nullable=False, server_default="ingress")
        )
        batch.create_check_constraint(CHECK, "direction IN ('ingress', 'output')")
        batch.drop_constraint(OLD_UNIQUE, type_="unique")
        batch.create_unique_constraint(NEW_UNIQUE, ["router_id", "protocol", "port", "direction"])


def downgrade() -> None:
    # Output bindings have no place in the old schema: refuse rather than drop users' data.
    count = op.get_bind().scalar(
        sa.text("SELECT count(*) FROM conntrack_helpers WHERE direction <> 'ingress'")
    )
    if count:
        raise RuntimeError(
            f"cannot downgrade below 0004: {count} output conntrack helper(s) exist; delete them"
        )
    with op.batch_alter_table("conntrack_helpers") as batch:
        batch.drop_constraint(NEW_UNIQUE, type_="unique")
        batch.drop_constraint(CHECK, type_="check")
        batch.drop_column("direction")
        batch.create_unique_constraint(OLD_UNIQUE, ["router_id", "protocol", "port"])
