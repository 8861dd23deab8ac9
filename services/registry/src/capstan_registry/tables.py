from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

from capstan_core.db import quarantine_table, tracking_table

metadata = MetaData()

models = Table(
    "models",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(128), nullable=False),  # unique per tenant (0005: ux_models_tenant_name)
    Column("description", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("creator", String(100), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("tenant", String(40), nullable=False, default="", index=True),  # the owning main account (#8, 0004)
    Index("ux_models_tenant_name", "tenant", "name", unique=True),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("model_id", String(40), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
    Column("metadata", Text, nullable=False),  # JSON of contracts.registry.ModelMetadata
    Column("lineage", Text, nullable=False),  # JSON of contracts.registry.Lineage
    Column("files", Text, nullable=False),  # JSON list of {path, sha256, size}
    Column("size_bytes", BigInteger, nullable=False),
    Column("creator", String(100), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

tracking = tracking_table(metadata)
quarantine = quarantine_table(metadata)
