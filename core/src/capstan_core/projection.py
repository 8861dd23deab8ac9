"""Projections: read models kept in SQL, fed in order from the event stream.

A runner consumes the stream from the sequence after the one it recorded, and
applies each batch of events in ONE SQL transaction that also records the last
applied sequence; a redelivered event (sequence <= recorded) is skipped. On
start a service catches up from its recorded sequence; ``rebuild`` drops the
read models (Alembic down to base, then up) and replays from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import Connection, Engine, MetaData, select
from sqlalchemy.dialects import postgresql, sqlite

from . import tracing
from .db import downgrade_to_base, tracking_table, upgrade
from .eventstore import RecordedEvent, decode_commit
from .streams import EVENTS_STREAM, EVENTS_SUBJECTS

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], rounds: int = 100) -> None:
    """Cancel tasks and wait until they are done. Cancelling again matters: on Python 3.11,
    ``asyncio.wait_for`` may swallow a cancellation that arrives as its inner future completes,
    and the task then runs on (a stop that awaited it once would hang forever)."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            return
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    log.error("%d task(s) ignored cancellation", len(pending))


class Projection:
    """Base class: subclasses implement ``apply`` with Core SQL on the given connection.

    A projection owns its tables and reads no other projection's, so the runner may hand it a
    whole batch at once: ``apply_many`` (default: ``apply`` per event, in order) is called
    while catching up or rebuilding. A projection that must rebuild fast overrides it, e.g.
    with one ``executemany`` per batch.
    """

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        raise NotImplementedError

    def apply_many(self, conn: Connection, records: Sequence[RecordedEvent]) -> None:
        for rec in records:
            self.apply(conn, rec)


_tracking = tracking_table(MetaData())


def read_position(conn: Connection, name: str) -> int:
    row = conn.execute(select(_tracking.c.position).where(_tracking.c.name == name)).first()
    return int(row[0]) if row else 0


def write_position(conn: Connection, name: str, position: int) -> None:
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(_tracking).values(name=name, position=position)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"position": position}))
    else:
        stmt2 = sqlite.insert(_tracking).values(name=name, position=position)
        conn.execute(stmt2.on_conflict_do_update(index_elements=["name"], set_={"position": position}))


def _stream_seq(m: Msg) -> int:
    """The message's stream sequence. The common reply form ``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<ts>.<pending>`` is split directly (``m.metadata``
    builds four objects per message); any other form goes through nats-py."""
    tokens = (m.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5])
    return m.metadata.sequence.stream


def _take_buffered(sub: JetStreamContext.PushSubscription, limit: int) -> list[Msg]:
    """Up to ``limit`` messages nats-py already holds for ``sub``, taken without awaiting.

    ``next_msg`` costs two asyncio tasks and a uuid4 per message (about half of what a raw
    ordered-consumer read costs per message; see scripts/bench_eventstore.py). nats-py's own
    ``fetch`` drains its buffer the same way; the byte accounting is kept. The caller takes
    the last message of a batch with ``next_msg``, which answers flow control as before.
    Falls back to taking nothing if nats-py's internals change.
    """
    queue: asyncio.Queue[Msg] | None = getattr(sub, "_pending_queue", None)
    if queue is None or not hasattr(sub, "_pending_size"):
        return []
    out: list[Msg] = []
    while len(out) < limit and queue.qsize() > 1:
        m = queue.get_nowait()
        sub._pending_size -= len(m.data)
        queue.task_done()
        out.append(m)
    return out


class ProjectionRunner:
    def __init__(
        self,
        name: str,
        js: JetStreamContext,
        engine: Engine,
        projections: Sequence[Projection],
        *,
        service: str,
        stream: str = EVENTS_STREAM,
        filter_subject: str = EVENTS_SUBJECTS,
        batch_max: int = 2000,
    ) -> None:
        self.name = name
        self._js = js
        self._engine = engine
        self._projections = list(projections)
        self._stream = stream
        self._filter = filter_subject
        self._batch_max = batch_max
        self._tracer = tracing.tracer(service)
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Condition()
        self._listeners: list[Callable[[int], None]] = []
        self.live = False  # spans per event only once caught up (not during a rebuild)
        with engine.connect() as conn:
            self.position = read_position(conn, name)

    def on_advance(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(position)`` after every applied batch (wakes reconcile loops)."""
        self._listeners.append(fn)

    # -- consuming -----------------------------------------------------------
    async def _subscribe(self) -> JetStreamContext.PushSubscription:
        start = self.position + 1
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        return await self._js.subscribe(self._filter, stream=self._stream, ordered_consumer=True, config=cfg)

    def _apply_batch(self, msgs: list[Msg]) -> int:
        records: list[RecordedEvent] = []
        for m in msgs:
            seq = _stream_seq(m)
            if seq <= self.position:
                continue  # duplicate delivery: already applied
            records.extend(decode_commit(seq, m.subject, m.data, m.headers))
        if not records:
            return self.position
        last = records[-1].seq
        with self._engine.begin() as conn:
            if read_position(conn, self.name) >= last:
                return last  # another runner (a rebuild) got there first
            if self.live:
                # Live: one span per event, continuing the trace of the command that appended it.
                for rec in records:
                    with tracing.attached(tracing.extract(rec.headers)), self._tracer.start_as_current_span(
                        f"project {rec.event.TYPE}", attributes={"capstan.seq": rec.seq}
                    ):
                        for p in self._projections:
                            p.apply(conn, rec)
            else:
                for p in self._projections:
                    p.apply_many(conn, records)
            write_position(conn, self.name, last)
        return last

    async def _consume(self, stop_at: int | None = None) -> None:
        """Consume until cancelled, or until ``stop_at`` is reached."""
        while True:
            if stop_at is not None and self.position >= stop_at:
                return
            sub = await self._subscribe()
            try:
                while True:
                    if stop_at is not None and self.position >= stop_at:
                        return
                    try:
                        msg = await sub.next_msg(timeout=2.0)
                    except NatsTimeout:
                        # Quiet, or the ordered consumer lost the server: resubscribe if the stream moved on.
                        if self._filter_is_narrow():
                            if stop_at is not None:
                                return  # nothing more matches the filter
                            continue
                        info = await self._js.stream_info(self._stream)
                        if info.state.last_seq > self.position:
                            break
                        continue
                    batch = [msg]
                    while sub.pending_msgs > 0 and len(batch) < self._batch_max:
                        batch.extend(_take_buffered(sub, self._batch_max - len(batch) - 1))
                        # The last one through next_msg: it answers JetStream flow control.
                        batch.append(await sub.next_msg(timeout=1.0))
                    new_pos = self._apply_batch(batch)
                    if new_pos > self.position:
                        self.position = new_pos
                        async with self._advanced:
                            self._advanced.notify_all()
                        for fn in self._listeners:
                            fn(new_pos)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    def _filter_is_narrow(self) -> bool:
        return self._filter != EVENTS_SUBJECTS

    async def catch_up(self) -> None:
        """Apply everything the stream holds now, then return."""
        info = await self._js.stream_info(self._stream)
        target = int(info.state.last_seq)
        if self.position < target:
            await self._consume(stop_at=target)

    async def start(self) -> None:
        await self.catch_up()
        self.live = True
        self._task = asyncio.create_task(self._run_forever(), name=f"projection-{self.name}")

    async def _run_forever(self) -> None:
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("projection %s: consumer failed; resubscribing", self.name)
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self._task:
            await cancel_and_wait([self._task])
            self._task = None

    async def wait_for(self, seq: int, timeout: float = 5.0) -> bool:
        """Wait until the read models include ``seq`` (read-your-writes after a command)."""
        async def _wait() -> None:
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.position >= seq)

        try:
            await asyncio.wait_for(_wait(), timeout)
            return True
        except TimeoutError:
            return False


async def rebuild(
    name: str, js: JetStreamContext, engine: Engine, projections: Sequence[Projection], migrations: Path, service: str
) -> int:
    """Drop the read models and replay the whole stream. Returns the position reached."""
    downgrade_to_base(migrations, engine)
    upgrade(migrations, engine)
    runner = ProjectionRunner(name, js, engine, projections, service=service)
    await runner.catch_up()
    return runner.position
