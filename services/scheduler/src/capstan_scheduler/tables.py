"""The scheduler's read models (SQL). Created by Alembic migrations, filled by projections.py."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

from capstan_core.db import quarantine_table, tracking_table

metadata = MetaData()

resource_groups = Table(
    "resource_groups",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(60), nullable=False, index=True),
    Column("description", Text, nullable=False, default=""),
    Column("tags", Text, nullable=False),  # JSON object
    Column("policy", Text, nullable=False),  # JSON object
    Column("creator", String(100), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    # #8 (migration 0007): the owning main account, and the tenants the operator shared it with (JSON list)
    Column("tenant", String(40), nullable=False, default="", index=True),
    Column("shared_with", Text, nullable=False, default="[]"),
    Index("ix_resource_groups_tenant_name", "tenant", "name"),  # names are unique per tenant (0009)
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("resource_group_id", String(40), nullable=False, index=True),
    Column("name", String(60), nullable=False),
    Column("agent_kind", String(20), nullable=False),
    Column("state", String(20), nullable=False),
    Column("state_reason", Text, nullable=False, default=""),
    Column("cpu", Float, nullable=False),
    Column("memory_gib", Float, nullable=False),
    Column("gpus", Text, nullable=False),  # JSON {card type: count}
    Column("joined_at_ms", BigInteger, nullable=False),
    Column("state_changed_at_ms", BigInteger, nullable=False),
    Column("shareable", Text, nullable=True),  # JSON [card type, ...] fixed at join; NULL: the current setting
    Column("capabilities", Text, nullable=False, default="[]"),  # JSON [capability, ...]: what its agent can run
)

workloads = Table(
    "workloads",
    metadata,
    Column("id", String(60), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("resource_group_id", String(40), nullable=False, index=True),
    Column("status", String(20), nullable=False, index=True),  # submitted, queued, placed, released, rejected
    Column("cpu", Float, nullable=False),
    Column("memory_gib", Float, nullable=False),
    Column("gpu_type", String(40), nullable=False),
    Column("gpu", Float, nullable=False),
    Column("instance_count", Integer, nullable=False),
    Column("submitted_seq", BigInteger, nullable=False),  # FIFO order
    Column("submitted_at_ms", BigInteger, nullable=False),
    Column("ended", Boolean, nullable=False, default=False),
    Column("subject_seq", BigInteger, nullable=False, default=0),  # last sequence on capstan.evt.workload.<id>
    Column("trace_parent", String(80), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("tags", Text, nullable=False, default="{}"),  # JSON object: drives the priority (TaskRules)
    Column("started_at_ms", BigInteger, nullable=False, default=0),
    Column("requeue", Boolean, nullable=False, default=False),  # its owner asks to go back to the queue
    Column("capability", String(40), nullable=False, default=""),  # what a node must be able to run ("": any)
    # #8 (migration 0009): the owning main account ("": not recorded); others see it in a queue anonymously
    Column("tenant", String(40), nullable=False, default=""),
    # migration 0010: the stream position of the last event that changed the row (0: written before it), so
    # the scheduler's cycle reads only the rows changed since its last read (``active_work.py``)
    Column("changed_seq", BigInteger, nullable=False, default=0, server_default="0", index=True),
)

allocations = Table(
    "allocations",
    metadata,
    Column("workload_id", String(60), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("node_id", String(40), nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("cpu", Float, nullable=False),
    Column("memory_gib", Float, nullable=False),
    Column("gpu_type", String(40), nullable=False),
    Column("gpu", Float, nullable=False),
    Column("cards", Text, nullable=False, default="[]"),  # JSON [[card index, tenths], ...]
)

node_health_checks = Table(
    "node_health_checks",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),  # the record's stream sequence
    Column("node_id", String(40), nullable=False, index=True),
    Column("resource_group_id", String(40), nullable=False, index=True),
    Column("ok", Boolean, nullable=False),
    Column("trigger", String(20), nullable=False),  # deploy | periodic
    Column("checks", Text, nullable=False),  # JSON [{"name", "ok", "detail"}, ...]
    Column("at_ms", BigInteger, nullable=False),
)

tracking = tracking_table(metadata)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("resource_group_id", String(40), nullable=False, index=True),
    Column("description", Text, nullable=False, default=""),
    Column("created_by", String(140), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("uses", Integer, nullable=False, default=0),
    Column("last_used_at_ms", BigInteger, nullable=False, default=0),
)
quarantine = quarantine_table(metadata)
