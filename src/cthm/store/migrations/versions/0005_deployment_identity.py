"""Deployment identity: one row naming this database's deployment (a fresh uuid4). Every table
or chain cthm writes into the kernel carries it, so the orphan sweep removes only kernel state
of this deployment, never another cthm's that shares the host.

It belongs to the database, not to a process or a host: API replicas and agents that share one
database (PostgreSQL) are one deployment. A missing row is also made at first use
(store/deployment.py), by whichever process gets there first.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from cthm.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    deployment = op.create_table(
        "deployment",
        # Primary key fixed at 1 (the check): a second row, even from a racing process, is refused.
        sa.Column("singleton", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("deployment_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("singleton = 1", name="ck_deployment_singleton"),
        sa.PrimaryKeyConstraint("singleton", name="pk_deployment"),
    )
    op.bulk_insert(
        deployment,
        [{"singleton": 1, "deployment_id": str(uuid.uuid4()), "created_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    # The identity is lost: a later upgrade makes a new one, and the kernel state marked with
    # this one is then another deployment's to the sweep (reported, never deleted); the routers'
    # own tables are marked again at their next apply.
    op.drop_table("deployment")
