"""Tenants (issue #8): each task records the main account that owns it; users list their tenant's only.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_tasks") as batch:
        batch.add_column(sa.Column("tenant", sa.String(40), nullable=False, server_default=""))
    op.create_index("ix_training_tasks_tenant_seq", "training_tasks", ["tenant", "submitted_seq"])


def downgrade() -> None:
    op.drop_index("ix_training_tasks_tenant_seq", "training_tasks")
    with op.batch_alter_table("training_tasks") as batch:
        batch.drop_column("tenant")
