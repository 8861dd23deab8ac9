"""A task's network mode (isolated, none, host) (issue #7).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_tasks") as batch:
        batch.add_column(sa.Column("network", sa.String(16), nullable=False, server_default="isolated"))


def downgrade() -> None:
    with op.batch_alter_table("training_tasks") as batch:
        batch.drop_column("network")
