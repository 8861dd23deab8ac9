"""Indexes for lists at 100,000 tasks (issue #11): newest first, alone or within a creator, a group or a
status, read in index order (keyset pages); the placement the trainer's loops look for.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_training_tasks_submitted_seq": ["submitted_seq"],
    "ix_training_tasks_creator_seq": ["creator", "submitted_seq"],
    "ix_training_tasks_group_seq": ["resource_group_id", "submitted_seq"],
    "ix_training_tasks_status_seq": ["status", "submitted_seq"],
    "ix_training_tasks_placement": ["placement"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "training_tasks", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "training_tasks")
