"""Initial read models: training tasks, their instances, projection position.

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
        "training_tasks",
        sa.Column("id", sa.String(60), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("resource_group_id", sa.String(40), nullable=False, index=True),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=False),
        sa.Column("cpu", sa.Float, nullable=False),
        sa.Column("memory_gib", sa.Float, nullable=False),
        sa.Column("gpu_type", sa.String(40), nullable=False),
        sa.Column("gpu", sa.Float, nullable=False),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("stop_grace_seconds", sa.Integer, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("creator", sa.String(100), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("placement", sa.String(20), nullable=False),
        sa.Column("stop_requested", sa.Boolean, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("failure_reason", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("queued_at_ms", sa.BigInteger, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("ended_at_ms", sa.BigInteger, nullable=False),
        sa.Column("submitted_seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "training_instances",
        sa.Column("task_id", sa.String(60), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
    )
    create_tracking_table(op)


def downgrade() -> None:
    drop_tracking_table(op)
    op.drop_table("training_instances")
    op.drop_table("training_tasks")
