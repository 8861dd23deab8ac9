"""Capabilities (issue #9): what a node's agent can run, and what a workload needs.

Rows from before are filled as the events they came from read: a node's from its agent kind, a
workload's from its kind (training tasks need "training", service replicas "serving").

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("capabilities", sa.Text, nullable=False, server_default="[]"))
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("capability", sa.String(40), nullable=False, server_default=""))
    op.execute("UPDATE nodes SET capabilities = '[\"training\"]' WHERE agent_kind = 'trainer'")
    op.execute("UPDATE nodes SET capabilities = '[\"serving\"]' WHERE agent_kind = 'inference'")
    op.execute("UPDATE workloads SET capability = 'training' WHERE kind = 'training'")
    op.execute("UPDATE workloads SET capability = 'serving' WHERE kind = 'service'")


def downgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("capability")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("capabilities")
