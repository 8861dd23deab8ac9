"""The quarantine: commits of the event log this service's projections set aside (issue #7).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from capstan_core.db import create_quarantine_table, drop_quarantine_table

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_quarantine_table(op)


def downgrade() -> None:
    drop_quarantine_table(op)
