"""Initial read models: resource groups, nodes, workloads, allocations, projection position.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from capstan_core.db import create_tracking_table, drop_tracking_table

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_groups",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(60), nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("creator", sa.String(100), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("resource_group_id", sa.String(40), nullable=False, index=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("agent_kind", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.Text, nullable=False),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory_gib", sa.Float, nullable=False),
        sa.Column("gpus", sa.Text, nullable=False),
        sa.Column("joined_at_ms", sa.BigInteger, nullable=False),
        sa.Column("state_changed_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "workloads",
        sa.Column("id", sa.String(60), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("resource_group_id", sa.String(40), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory_gib", sa.Float, nullable=False),
        sa.Column("gpu_type", sa.String(40), nullable=False),
        sa.Column("gpu", sa.Float, nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("submitted_seq", sa.BigInteger, nullable=False),
        sa.Column("submitted_at_ms", sa.BigInteger, nullable=False),
        sa.Column("ended", sa.Boolean, nullable=False),
        sa.Column("subject_seq", sa.BigInteger, nullable=False),
        sa.Column("trace_parent", sa.String(80), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "allocations",
        sa.Column("workload_id", sa.String(60), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.String(40), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory_gib", sa.Float, nullable=False),
        sa.Column("gpu_type", sa.String(40), nullable=False),
        sa.Column("gpu", sa.Float, nullable=False),
    )
    create_tracking_table(op)


def downgrade() -> None:
    drop_tracking_table(op)
    for t in ("allocations", "workloads", "nodes", "resource_groups"):
        op.drop_table(t)
