"""Auto-restart budget of a training task: max_restarts and restarts_used (SPEC 3.1).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_tasks") as batch:
        batch.add_column(sa.Column("max_restarts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("restarts_used", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("training_tasks") as batch:
        batch.drop_column("restarts_used")
        batch.drop_column("max_restarts")
