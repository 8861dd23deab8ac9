"""The gateway's identity store (issue #8): accounts, API keys, custom policies, audit records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(40), nullable=False, index=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("is_operator", sa.Boolean, nullable=False),
        sa.Column("password_hash", sa.String(200)),
        sa.Column("session_epoch", sa.Integer, nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("created_by", sa.String(40), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("account_id", sa.String(40), nullable=False, index=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "policies",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant", sa.String(40), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("statements", sa.Text, nullable=False),
        sa.Column("description", sa.String(500), nullable=False),
        sa.Column("created_by", sa.String(40), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ux_policies_tenant_name", "policies", ["tenant", "name"], unique=True)
    op.create_table(
        "audit",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False, index=True),
        sa.Column("account", sa.String(40), nullable=False),
        sa.Column("tenant", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("action", sa.String(80), nullable=False),
        sa.Column("object", sa.String(300), nullable=False),
        sa.Column("allowed", sa.Boolean, nullable=False),
        sa.Column("detail", sa.String(300), nullable=False),
    )
    op.create_index("ix_audit_tenant_seq", "audit", ["tenant", "seq"])


def downgrade() -> None:
    for table in ("audit", "policies", "api_keys", "accounts"):
        op.drop_table(table)
