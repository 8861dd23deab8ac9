"""Projection runner contract, on SQLite and on PostgreSQL (both real), against a real nats-server."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from nats.aio.client import Client
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, select
from sqlalchemy.exc import OperationalError

from capstan_core.db import make_engine, quarantine_table, table_digest, tracking_table
from capstan_core.events import Event, event
from capstan_core.eventstore import EventStore, RecordedEvent
from capstan_core.metrics import QUARANTINED
from capstan_core.projection import Projection, ProjectionRunner, read_position
from capstan_core.streams import ensure_streams, event_subject
from capstan_core.testing import poison_messages, publish_poison

metadata = MetaData()
counters = Table(
    "counters",
    metadata,
    Column("id", String(50), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("applied", Integer, nullable=False),
)
tracking_table(metadata)
quarantine = quarantine_table(metadata)


@event("TestCounterAdded")
class CounterAdded(Event):
    amount: int


class CounterProjection(Projection):
    """Counts per aggregate. ``fail_on``: an amount whose apply raises AFTER writing (the write must roll
    back with it); ``transient_on``: an amount whose first apply hits a locked database."""

    def __init__(self, fail_on: int | None = None, transient_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.transient_on = transient_on
        self.threads: set[str] = set()

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        self.threads.add(threading.current_thread().name)
        if not isinstance(rec.event, CounterAdded):
            return
        if self.transient_on is not None and rec.event.amount == self.transient_on:
            self.transient_on = None
            raise OperationalError("UPDATE counters", {}, sqlite3.OperationalError("database is locked"))
        self._count(conn, rec)
        if self.fail_on is not None and rec.event.amount == self.fail_on:
            raise RuntimeError("boom")

    def _count(self, conn: Connection, rec: RecordedEvent) -> None:
        assert isinstance(rec.event, CounterAdded)
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
    assert r2._apply_batch(msgs)[0] == 15
    with engine.connect() as conn:
        assert sum(r.applied for r in conn.execute(select(counters))) == 15


def _quarantined(engine) -> list[tuple[int, str, str]]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [(r.seq, r.kind, r.error) for r in conn.execute(select(quarantine).order_by(quarantine.c.seq))]


@pytest.mark.parametrize("live", [False, True], ids=["catching-up", "live"])
async def test_a_commit_whose_apply_raises_is_set_aside_alone(
    database_url: str, nc: Client, store: EventStore, live: bool
) -> None:
    """Its writes roll back (its SAVEPOINT), every other commit of the batch is applied, the position moves
    past it, and the quarantine names it with its sequence and error."""
    engine = make_engine(database_url)
    metadata.create_all(engine)
    await _append(store, 5, ids=1)  # amounts 1..5 on c0; 4 fails after writing
    sub = await nc.jetstream().subscribe("capstan.evt.>", ordered_consumer=True)
    msgs = [await sub.next_msg(timeout=2) for _ in range(5)]
    projection = CounterProjection(fail_on=4)
    runner = ProjectionRunner("p", nc.jetstream(), engine, [projection], service="test")
    runner.live = live
    position, applied = runner._apply_batch(msgs)
    assert position == 5
    # what batch listeners (ProjectionRunner.on_batch) are given: every applied event, not the set-aside one
    assert [r.seq for r in applied] == [m.metadata.sequence.stream for m in msgs if m.metadata.sequence.stream != 4]
    with engine.connect() as conn:
        assert read_position(conn, "p") == 5
        assert conn.execute(select(counters.c.value, counters.c.applied)).one() == (1 + 2 + 3 + 5, 4)
    assert _quarantined(engine) == [(4, "apply_failed", "applying TestCounterAdded: RuntimeError: boom")]
    assert runner.counters.get(QUARANTINED, kind="apply_failed") == 1


async def test_poison_is_set_aside_the_same_way_on_every_rebuild(
    database_url: str, nc: Client, store: EventStore
) -> None:
    """Every kind of poison between good commits: the good ones are applied, each poison is recorded
    once (sequence, kind, error) and counted; a rebuild from zero records the same rows."""
    engine = make_engine(database_url)
    metadata.create_all(engine)
    js = nc.jetstream()
    poisons = poison_messages(("TestCounterAdded", {"amount": 1}), ("TestCounterAdded", {"amount": "lots"}))
    expected = []
    for i, poison in enumerate(poisons):
        await store.append(event_subject("counter", "c"), [CounterAdded(amount=i + 1)], expected_seq=None)
        seq = await publish_poison(js, event_subject("counter", "c"), poison)
        expected.append((seq, poison.kind))
    await store.append(event_subject("counter", "c"), [CounterAdded(amount=100)], expected_seq=None)
    runner = ProjectionRunner("p", js, engine, [CounterProjection()], service="test")
    await runner.catch_up()
    await runner.stop()
    rows = _quarantined(engine)
    assert [(seq, kind) for seq, kind, _ in rows] == expected
    errors = [error for _, _, error in rows]
    assert errors[0].startswith("not JSON (JSONDecodeError: Expecting value")
    assert errors[1].startswith("not a commit")
    assert errors[2] == "event 0 (TestCounterAdded): TestCounterAdded v99 is newer than this service reads (v1); " \
        "upgrade the service to apply it"
    assert errors[3].startswith("event 0 (TestCounterAdded): amount: Input should be a valid integer")
    assert "over the 524288-byte limit" in errors[4]
    assert runner.counters.get(QUARANTINED) == len(poisons)
    assert runner.position == await store.last_seq()
    with engine.connect() as conn:
        assert conn.execute(select(counters.c.value)).scalar() == sum(range(1, len(poisons) + 1)) + 100
    before = table_digest(engine)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    again = ProjectionRunner("p", js, engine, [CounterProjection()], service="test")
    await again.catch_up()
    await again.stop()
    assert _quarantined(engine) == rows
    assert table_digest(engine) == before


async def test_an_error_quoting_a_nul_the_poison_chose_is_still_recorded(database_url: str, nc: Client) -> None:
    """pydantic's error names the offending key; PostgreSQL text cannot hold the NUL it may contain."""
    import json

    from capstan_core.contracts.training import TrainingTaskSubmitted

    engine = make_engine(database_url)
    metadata.create_all(engine)
    js = nc.jetstream()
    await ensure_streams(js)
    data = {"task_id": "t", "name": "n", "resource_group_id": "r", "command": "c", "hyperparameters": {},
            "resources": {}, "instance_count": 1, "tags": {"\x00": 5}, "creator": "u", "stop_grace_seconds": 1,
            "at_ms": 1}
    body = {"t": 1, "events": [{"type": TrainingTaskSubmitted.TYPE, "version": 1, "data": data}]}
    await js.publish(event_subject("train", "t"), json.dumps(body).encode())
    runner = ProjectionRunner("p", js, engine, [CounterProjection()], service="test")
    await runner.catch_up()
    await runner.stop()
    assert _quarantined(engine) == [(1, "invalid", "event 0 (TrainingTaskSubmitted): tags.\\x00: Input should be a valid string")]


async def test_a_transient_database_error_is_retried_never_set_aside(
    database_url: str, nc: Client, store: EventStore
) -> None:
    engine = make_engine(database_url)
    metadata.create_all(engine)
    projection = CounterProjection(transient_on=2)
    runner = ProjectionRunner("p", nc.jetstream(), engine, [projection], service="test")
    await runner.start()
    try:
        await _append(store, 3, ids=1)
        assert await runner.wait_for(3, timeout=10)
        with engine.connect() as conn:
            assert conn.execute(select(counters.c.value, counters.c.applied)).one() == (6, 3)
        assert _quarantined(engine) == []
        # batches are written in the runner's own thread, never on the event loop
        assert projection.threads == {"projection-p_0"}
        assert threading.current_thread().name not in projection.threads
    finally:
        await runner.stop()


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


class MineOnly(CounterProjection):
    subjects = (event_subject("counter", "mine")[:-4],)  # "capstan.evt.counter.": not "capstan.evt.other."


async def test_commits_on_subjects_no_projection_reads_are_skipped_undecoded(
    database_url: str, nc: Client, store: EventStore
) -> None:
    """A runner whose projections all name their subjects never decodes the rest: poison there is not its
    to set aside, its listeners never see them, and its position moves past them in memory while the
    recorded one stays at the last commit it applied, live or rebuilt alike."""
    engine = make_engine(database_url)
    metadata.create_all(engine)
    js = nc.jetstream()
    await store.append(event_subject("counter", "a"), [CounterAdded(amount=1)], expected_seq=None)
    await publish_poison(js, event_subject("other", "x"), poison_messages(("TestCounterAdded", {"amount": 1}), ("TestCounterAdded", {"amount": "lots"}))[0])
    await store.append(event_subject("other", "y"), [CounterAdded(amount=50)], expected_seq=None)
    await store.append(event_subject("counter", "a"), [CounterAdded(amount=2)], expected_seq=None)
    last_mine = await store.last_seq()
    await store.append(event_subject("other", "z"), [CounterAdded(amount=60)], expected_seq=None)
    seen: list[str] = []
    runner = ProjectionRunner("p", js, engine, [MineOnly()], service="test")
    runner.on_batch(lambda _pos, records: seen.extend(r.subject for r in records))
    await runner.start()
    try:
        assert runner.position == await store.last_seq()
        live = await store.append(event_subject("other", "w"), [CounterAdded(amount=70)], expected_seq=None)
        assert await runner.wait_for(live.seq, timeout=5)  # read-your-writes holds for skipped commits too
        mine = await store.append(event_subject("counter", "b"), [CounterAdded(amount=3)], expected_seq=None)
        assert await runner.wait_for(mine.seq, timeout=5)
    finally:
        await runner.stop()
    assert _quarantined(engine) == []
    assert runner.counters.get(QUARANTINED) == 0
    assert set(seen) <= {event_subject("counter", "a"), event_subject("counter", "b")}
    with engine.connect() as conn:
        assert dict(conn.execute(select(counters.c.id, counters.c.value)).all()) == {"a": 3, "b": 3}
        assert read_position(conn, "p") == mine.seq
    # a rebuild records the same rows and position (the last commit applied), however the log is batched
    before = table_digest(engine)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    again = ProjectionRunner("p", js, engine, [MineOnly()], service="test")
    await again.catch_up()
    await again.stop()
    assert table_digest(engine) == before
    with engine.connect() as conn:
        assert read_position(conn, "p") == mine.seq
    assert last_mine < mine.seq
    # a runner with one projection that reads everything decodes everything (the poison is set aside)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    every = ProjectionRunner("p", js, engine, [MineOnly(), CounterProjection()], service="test")
    await every.catch_up()
    await every.stop()
    assert [kind for _, kind, _ in _quarantined(engine)] == ["undecodable"]
