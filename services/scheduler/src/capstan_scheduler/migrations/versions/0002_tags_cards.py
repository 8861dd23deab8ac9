"""Workload tags and start time, and the cards each allocation holds (fractional GPUs, issue #3).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("tags", sa.Text, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("started_at_ms", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(sa.Column("cards", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("allocations") as batch:
        batch.drop_column("cards")
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("started_at_ms")
        batch.drop_column("tags")
