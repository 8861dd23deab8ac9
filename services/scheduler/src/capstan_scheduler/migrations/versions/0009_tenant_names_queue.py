"""Tenants (issue #8): resource-group names are unique per tenant (looked up by tenant and name), and each
workload records its tenant, so a shared group's queue shows other tenants' work only anonymously.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_resource_groups_tenant_name", "resource_groups", ["tenant", "name"])
    with op.batch_alter_table("workloads") as batch:
        batch.add_column(sa.Column("tenant", sa.String(40), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("workloads") as batch:
        batch.drop_column("tenant")
    op.drop_index("ix_resource_groups_tenant_name", "resource_groups")
