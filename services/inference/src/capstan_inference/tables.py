from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, MetaData, String, Table, Text

from capstan_core.db import quarantine_table, tracking_table

metadata = MetaData()

agents = Table(
    "inference_agents",
    metadata,
    Column("node_id", String(40), primary_key=True),
    Column("resource_group_id", String(40), nullable=False),
    Column("name", String(60), nullable=False),
    Column("state", String(20), nullable=False),
)

# One row per service group: the fold of its events (domain/group.py) as JSON, and the columns lists
# filter and sort on. ``seq``: the stream sequence of its last event (the routing table's revision is
# the largest; a deleted group keeps its row so the revision never goes back).
services = Table(
    "inference_services",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("name", String(60), nullable=False),
    Column("creator", String(128), nullable=False),
    Column("tenant", String(64), nullable=False, server_default=""),
    Column("status", String(20), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("doc", Text, nullable=False),
    Index("ix_inference_services_list", "deleted", "created_at_ms"),
)

# Where the scheduler put each replica (workload id = replica id), or why it refused it.
placements = Table(
    "inference_placements",
    metadata,
    Column("replica_id", String(64), primary_key=True),
    Column("node_id", String(40), nullable=False),
    Column("rejected", Text, nullable=False),
)

tracking = tracking_table(metadata)
quarantine = quarantine_table(metadata)
