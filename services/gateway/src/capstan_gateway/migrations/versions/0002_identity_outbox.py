"""Identity changes become events of the log (issue #8): the outbox. Each change of an account, key or
policy attachment writes its commit here in the change's own transaction; the gateway appends them to
the log in order and removes them once acknowledged (the store stays the source of truth).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_outbox",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("msg_id", sa.String(40), nullable=False),  # Nats-Msg-Id: a retried append lands once
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("commit", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("identity_outbox")
