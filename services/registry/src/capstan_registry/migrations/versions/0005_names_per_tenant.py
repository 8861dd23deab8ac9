"""Model names are unique per tenant (issue #8): two tenants may each have a model "x"; the unique
constraint on ``name`` alone becomes one on ``(tenant, name)``.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _models(name_unique: bool) -> sa.Table:
    """The table as it is to be (SQLite rebuilds it from this: its unnamed constraint cannot be dropped)."""
    return sa.Table(
        "models", sa.MetaData(),
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=name_unique),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("creator", sa.String(100), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("tenant", sa.String(40), nullable=False, server_default=""),
        sa.Index("ix_models_tenant", "tenant"),
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("models", copy_from=_models(False), recreate="always"):
            pass
    else:  # PostgreSQL names the column's constraint <table>_<column>_key
        op.drop_constraint("models_name_key", "models", type_="unique")
    op.create_index("ux_models_tenant_name", "models", ["tenant", "name"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_models_tenant_name", "models")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("models", copy_from=_models(True), recreate="always"):
            pass
    else:
        op.create_unique_constraint("models_name_key", "models", ["name"])
