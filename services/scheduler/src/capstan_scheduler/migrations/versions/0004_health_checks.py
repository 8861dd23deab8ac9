"""Health-check records of nodes; the card types a node shares, fixed at join (issue #3).

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
    op.create_table(
        "node_health_checks",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("node_id", sa.String(40), nullable=False, index=True),
        sa.Column("resource_group_id", sa.String(40), nullable=False, index=True),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),
        sa.Column("checks", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("shareable", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("shareable")
    op.drop_table("node_health_checks")
