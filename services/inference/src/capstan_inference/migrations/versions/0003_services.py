"""Online services: service groups (their folded state) and where their replicas are placed (issue #9).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inference_services",
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("creator", sa.String(128), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
    )
    op.create_index("ix_inference_services_list", "inference_services", ["deleted", "created_at_ms"])
    op.create_table(
        "inference_placements",
        sa.Column("replica_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(40), nullable=False),
        sa.Column("rejected", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("inference_placements")
    op.drop_index("ix_inference_services_list", "inference_services")
    op.drop_table("inference_services")
