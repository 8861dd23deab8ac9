"""Indexes for lists filtered twice at 100,000 tasks (issue #11): "only mine" with a status, and a tenant's
lists (a user's are always within its tenant) with a creator, a status or both. SQLite reads a table
through one index, so a filter of two columns needs an index on both or it walks every row of one.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_training_tasks_creator_status_seq": ["creator", "status", "submitted_seq"],
    "ix_training_tasks_tenant_creator_seq": ["tenant", "creator", "submitted_seq"],
    "ix_training_tasks_tenant_status_seq": ["tenant", "status", "submitted_seq"],
    "ix_training_tasks_tenant_creator_status_seq": ["tenant", "creator", "status", "submitted_seq"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "training_tasks", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "training_tasks")
