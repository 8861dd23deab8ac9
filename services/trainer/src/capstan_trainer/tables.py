"""The trainer's read models (SQL)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from capstan_core.db import quarantine_table, tracking_table

metadata = MetaData()

training_tasks = Table(
    "training_tasks",
    metadata,
    Column("id", String(60), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("resource_group_id", String(40), nullable=False, index=True),
    Column("command", Text, nullable=False),
    Column("hyperparameters", Text, nullable=False),  # JSON object
    Column("cpu", Float, nullable=False),
    Column("memory_gib", Float, nullable=False),
    Column("gpu_type", String(40), nullable=False),
    Column("gpu", Float, nullable=False),
    Column("instance_count", Integer, nullable=False),
    Column("stop_grace_seconds", Integer, nullable=False),
    Column("tags", Text, nullable=False),  # JSON object
    Column("creator", String(100), nullable=False, index=True),
    Column("tenant", String(40), nullable=False, default=""),  # the owning main account (#8, migration 0009)
    Column("status", String(20), nullable=False, index=True),
    Column("placement", String(20), nullable=False),  # none, queued, placed, rejected, released
    Column("stop_requested", Boolean, nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("failure_reason", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("queued_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("ended_at_ms", BigInteger, nullable=False),
    Column("submitted_seq", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False, default=0),  # grows when an evicted attempt is requeued
    Column("preemptions", Integer, nullable=False, default=0),
    Column("restarts", Integer, nullable=False, default=0),  # after a failure or after its node was lost
    Column("max_restarts", Integer, nullable=False, default=0),  # auto-restart budget (0: off)
    Column("restarts_used", Integer, nullable=False, default=0),  # restarts after a failure (against the budget)
    Column("network", String(16), nullable=False, default="isolated"),  # NETWORK_MODES
    # lists at 100,000 tasks, newest first, read in index order (migration 0007)
    Index("ix_training_tasks_submitted_seq", "submitted_seq"),
    Index("ix_training_tasks_creator_seq", "creator", "submitted_seq"),
    Index("ix_training_tasks_tenant_seq", "tenant", "submitted_seq"),
    Index("ix_training_tasks_group_seq", "resource_group_id", "submitted_seq"),
    Index("ix_training_tasks_status_seq", "status", "submitted_seq"),
    Index("ix_training_tasks_placement", "placement"),
    # two filters at once (migration 0010): "only mine" with a status, a tenant's lists
    Index("ix_training_tasks_creator_status_seq", "creator", "status", "submitted_seq"),
    Index("ix_training_tasks_tenant_creator_seq", "tenant", "creator", "submitted_seq"),
    Index("ix_training_tasks_tenant_status_seq", "tenant", "status", "submitted_seq"),
    Index("ix_training_tasks_tenant_creator_status_seq", "tenant", "creator", "status", "submitted_seq"),
    # description, image, mode, roles, storage, code, output, source_task_id (JSON; issue #10)
    Column("form", Text, nullable=False, default="{}"),
)

training_instances = Table(
    "training_instances",
    metadata,
    Column("task_id", String(60), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("node_id", String(40), nullable=False),
    Column("status", String(20), nullable=False),  # Pending, Running, Exited
    Column("exit_code", Integer, nullable=True),
)

tracking = tracking_table(metadata)
quarantine = quarantine_table(metadata)
