"""Join tokens: how node agents get their certificate (issue #7).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("resource_group_id", sa.String(40), nullable=False, index=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(140), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("last_used_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("join_tokens")
