"""Tenants (issue #8): each service group records the tenant that owns it; lists filter on it.

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
    with op.batch_alter_table("inference_services") as t:
        t.add_column(sa.Column("tenant", sa.String(64), nullable=False, server_default=""))
    op.create_index("ix_inference_services_tenant", "inference_services", ["tenant", "deleted", "created_at_ms"])


def downgrade() -> None:
    op.drop_index("ix_inference_services_tenant", "inference_services")
    with op.batch_alter_table("inference_services") as t:
        t.drop_column("tenant")
