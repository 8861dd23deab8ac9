"""The quarantine: commits of the event log this service's projections set aside (issue #7).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from capstan_core.db import create_quarantine_table, drop_quarantine_table

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_quarantine_table(op)


def downgrade() -> None:
    drop_quarantine_table(op)
