from __future__ import annotations

from sqlalchemy import Column, MetaData, String, Table

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

tracking = tracking_table(metadata)
quarantine = quarantine_table(metadata)
