"""Initial read models: inference agents, projection position.

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
        "inference_agents",
        sa.Column("node_id", sa.String(40), primary_key=True),
        sa.Column("resource_group_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
    )
    create_tracking_table(op)


def downgrade() -> None:
    drop_tracking_table(op)
    op.drop_table("inference_agents")
