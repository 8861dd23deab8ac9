from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text

from capstan_core.db import quarantine_table, tracking_table

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("description", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("creator", String(100), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

tracking = tracking_table(metadata)
quarantine = quarantine_table(metadata)
