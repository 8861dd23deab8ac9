"""SQL plumbing shared by every service: engines, Alembic, the projection tracking and quarantine tables.

Engines are used from the event loop and from worker threads (projection batches, the scheduling
cycle, slow queries); each use checks out its own connection from the pool, and no connection is
shared between threads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, Text, create_engine, event, inspect, text

TRACKING_TABLE = "projection_positions"
QUARANTINE_TABLE = "event_quarantine"


def tracking_table(metadata: MetaData) -> Table:
    """The table where each projection runner records the last stream sequence it applied."""
    return Table(
        TRACKING_TABLE,
        metadata,
        Column("name", String(100), primary_key=True),
        Column("position", BigInteger, nullable=False),
    )


def quarantine_table(metadata: MetaData) -> Table:
    """Commits of the event log a projection runner set aside: one row per (runner, stream sequence).
    Every column comes from the stored message and this code, so a rebuild writes the same rows."""
    return Table(
        QUARANTINE_TABLE,
        metadata,
        Column("projection", String(100), primary_key=True),
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("subject", String(255), nullable=False),
        Column("kind", String(30), nullable=False),  # oversized, undecodable, newer_version, invalid, apply_failed
        Column("error", Text, nullable=False),
        Column("stored_at_ms", BigInteger, nullable=False),  # when the stream stored the message
    )


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite opens a transaction only before an INSERT/UPDATE/DELETE, so a SAVEPOINT issued
            # first would start (and its RELEASE commit) the transaction itself. Turn that off and
            # let SQLAlchemy emit BEGIN (below): projection batches nest a SAVEPOINT per commit.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # WAL: readers never block the projection writer. synchronous=NORMAL is safe here:
            # a read model that loses its last transactions replays them from the log.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_pre_ping=True)


def alembic_config(script_location: Path, engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(script_location: Path, engine: Engine) -> None:
    """Apply the service's migrations (run at every start)."""
    command.upgrade(alembic_config(script_location, engine), "head")


def downgrade_to_base(script_location: Path, engine: Engine) -> None:
    """Drop every read model of the service (the first step of a rebuild)."""
    command.downgrade(alembic_config(script_location, engine), "base")


def run_env(target_metadata: MetaData | None = None) -> None:
    """Body of every service's ``migrations/env.py``: migrate the engine handed in by ``upgrade``."""
    from alembic import context

    engine: Engine = context.config.attributes["engine"]
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        context.run_migrations()


def table_digest(engine: Engine, exclude: tuple[str, ...] = ("alembic_version", TRACKING_TABLE)) -> str:
    """A hash of every row of every table (sorted): equal digests mean equal read models."""
    h = hashlib.sha256()
    names = sorted(n for n in inspect(engine).get_table_names() if n not in exclude)
    with engine.connect() as conn:
        for name in names:
            rows = conn.execute(text(f'SELECT * FROM "{name}"')).fetchall()  # noqa: S608 - names from the schema
            h.update(name.encode())
            for row in sorted(repr(tuple(r)) for r in rows):
                h.update(row.encode())
    return h.hexdigest()


def create_tracking_table(op: Any) -> None:
    """For a service's first Alembic migration: the projection position table."""
    import sqlalchemy as sa

    op.create_table(
        TRACKING_TABLE,
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
    )


def drop_tracking_table(op: Any) -> None:
    op.drop_table(TRACKING_TABLE)


def create_quarantine_table(op: Any) -> None:
    """For each service's migration that adds the quarantine table (issue #7)."""
    import sqlalchemy as sa

    op.create_table(
        QUARANTINE_TABLE,
        sa.Column("projection", sa.String(100), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("stored_at_ms", sa.BigInteger, nullable=False),
    )


def drop_quarantine_table(op: Any) -> None:
    op.drop_table(QUARANTINE_TABLE)
