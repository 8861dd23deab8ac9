"""The gateway's identity database (SQLite in ``<data_dir>/identity.db`` by default)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),  # the login name
    Column("kind", String(16), nullable=False),  # main | sub | collaborator
    Column("tenant", String(40), nullable=False, index=True),  # the main account's id
    Column("enabled", Boolean, nullable=False),
    Column("is_operator", Boolean, nullable=False),
    Column("password_hash", String(200)),  # argon2id; NULL: no password login
    Column("session_epoch", Integer, nullable=False),  # bumped to end every session of the account
    Column("policies", Text, nullable=False),  # JSON list of preset names and custom policy ids
    Column("description", String(500), nullable=False),
    Column("created_by", String(40), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("account_id", String(40), nullable=False, index=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("expires_at_ms", BigInteger),
    Column("description", String(500), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)

policies = Table(
    "policies",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("tenant", String(40), nullable=False),
    Column("name", String(64), nullable=False),
    Column("statements", Text, nullable=False),
    Column("description", String(500), nullable=False),
    Column("created_by", String(40), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Index("ux_policies_tenant_name", "tenant", "name", unique=True),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False, index=True),
    Column("account", String(40), nullable=False),
    Column("tenant", String(40), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("source", String(16), nullable=False),
    Column("action", String(80), nullable=False),
    Column("object", String(300), nullable=False),
    Column("allowed", Boolean, nullable=False),
    Column("detail", String(300), nullable=False),
    Index("ix_audit_tenant_seq", "tenant", "seq"),
)

# Identity changes on their way to the event log (migration 0002): one encoded commit per row, appended
# in ``seq`` order (``Nats-Msg-Id``: the row's ``msg_id``, so a retry appends nothing twice), then removed.
outbox = Table(
    "identity_outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("msg_id", String(40), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("commit", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)
