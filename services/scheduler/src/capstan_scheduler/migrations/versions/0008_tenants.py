"""Tenants (issue #8): each resource group records the main account that owns it, and the tenants the
operator shared it with (a JSON list).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource_groups") as batch:
        batch.add_column(sa.Column("tenant", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("shared_with", sa.Text, nullable=False, server_default="[]"))
    op.create_index("ix_resource_groups_tenant", "resource_groups", ["tenant"])


def downgrade() -> None:
    op.drop_index("ix_resource_groups_tenant", "resource_groups")
    with op.batch_alter_table("resource_groups") as batch:
        batch.drop_column("shared_with")
        batch.drop_column("tenant")
