"""Initial read models: models, projection position.

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
        "models",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("creator", sa.String(100), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    create_tracking_table(op)


def downgrade() -> None:
    drop_tracking_table(op)
    op.drop_table("models")
