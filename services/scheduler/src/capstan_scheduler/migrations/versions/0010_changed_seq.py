"""Each workload row records the stream position of the last event that changed it (issue #11, point 4), so a
scheduling cycle reads only the rows changed since its last read instead of its groups' whole queues.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("changed_seq", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_workloads_changed_seq", "workloads", ["changed_seq"])


def downgrade() -> None:
    op.drop_index("ix_workloads_changed_seq", "workloads")
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("changed_seq")
