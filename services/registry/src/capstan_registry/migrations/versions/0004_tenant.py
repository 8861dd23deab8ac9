"""Tenants (issue #8): each model records the main account that owns it; users see their tenant's only.

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
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("tenant", sa.String(40), nullable=False, server_default=""))
    op.create_index("ix_models_tenant", "models", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_models_tenant", "models")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("tenant")
