"""Projection runner contract, on SQLite and on PostgreSQL (both real), against a real nats-server."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, select

from capstan_core.db import make_engine, table_digest, tracking_table
from capstan_core.events import Event, event
from capstan_core.eventstore import EventStore, RecordedEvent
from capstan_core.projection import Projection, ProjectionRunner, read_position
from capstan_core.streams import ensure_streams, event_subject

metadata = MetaData()
counters = Table(
    "counters",
    metadata,
    Column("id", String(50), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("applied", Integer, nullable=False),
)
tracking_table(metadata)


@event("TestCounterAdded")
class CounterAdded(Event):
    amount: int


class CounterProjection(Projection):
    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        if not isinstance(rec.event, CounterAdded):
            return
        if self.fail_on is not None and rec.event.amount == self.fail_on:
            raise RuntimeError("boom")
        row = conn.execute(select(counters).where(counters.c.id == rec.aggregate_id)).first()
        if row is None:
            conn.execute(counters.insert().values(id=rec.aggregate_id, value=rec.event.amount, applied=1))
        else:
            conn.execute(
                counters.update()
                .where(counters.c.id == rec.aggregate_id)
                .values(value=row.value + rec.event.amount, applied=row.applied + 1)
            )


async def _append(store: EventStore, n: int, ids: int = 3) -> None:
    for i in range(n):
        await store.append(event_subject("counter", f"c{i % ids}"), [CounterAdded(amount=i + 1)], expected_seq=None)


@pytest.fixture
async def store(nc: Client) -> EventStore:
    js = nc.jetstream()
    await ensure_streams(js)
    return EventStore(js)


async def test_catch_up_applies_in_order_and_records_position(database_url: str, nc: Client, store: EventStore) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    await _append(store, 30)
    runner = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection()], service="test")
    await runner.catch_up()
    with engine.connect() as conn:
        assert read_position(conn, "p") == 30
        rows = {r.id: r.value for r in conn.execute(select(counters))}
    assert rows == {f"c{k}": sum(i + 1 for i in range(30) if i % 3 == k) for k in range(3)}


async def test_restart_resumes_without_applying_twice(database_url: str, nc: Client, store: EventStore) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    await _append(store, 10)
    r1 = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection()], service="test")
    await r1.catch_up()
    await _append(store, 5)
    r2 = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection()], service="test")
    assert r2.position == 10
    await r2.catch_up()
    with engine.connect() as conn:
        assert sum(r.applied for r in conn.execute(select(counters))) == 15
    # A redelivered batch (sequences already applied) is skipped.
    sub = await nc.jetstream().subscribe("capstan.evt.>", ordered_consumer=True)
    msgs = [await sub.next_msg(timeout=2) for _ in range(15)]
    assert r2._apply_batch(msgs) == 15
    with engine.connect() as conn:
        assert sum(r.applied for r in conn.execute(select(counters))) == 15


async def test_failed_batch_leaves_rows_and_position_untouched(database_url: str, nc: Client, store: EventStore) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    await _append(store, 5)
    sub = await nc.jetstream().subscribe("capstan.evt.>", ordered_consumer=True)
    msgs = [await sub.next_msg(timeout=2) for _ in range(5)]
    runner = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection(fail_on=4)], service="test")
    with pytest.raises(RuntimeError):
        runner._apply_batch(msgs)
    with engine.connect() as conn:
        assert read_position(conn, "p") == 0
        assert conn.execute(select(counters)).fetchall() == []


async def test_live_runner_follows_new_events_and_wait_for(database_url: str, nc: Client, store: EventStore) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    runner = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection()], service="test")
    await runner.start()
    try:
        r = await store.append(event_subject("counter", "live"), [CounterAdded(amount=7)], expected_seq=0)
        assert await runner.wait_for(r.seq, timeout=5)
        with engine.connect() as conn:
            assert conn.execute(select(counters.c.value).where(counters.c.id == "live")).scalar() == 7
    finally:
        await runner.stop()


async def test_rebuild_from_zero_gives_identical_rows(database_url: str, nc: Client, store: EventStore) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    await _append(store, 50, ids=7)
    runner = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection()], service="test")
    await runner.catch_up()
    before = table_digest(engine)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    assert table_digest(engine) != before
    again = ProjectionRunner("p", nc.jetstream(), engine, [CounterProjection()], service="test")
    assert again.position == 0
    await again.catch_up()
    assert table_digest(engine) == before
