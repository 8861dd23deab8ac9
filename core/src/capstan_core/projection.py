"""Projections: read models kept in SQL, fed in order from the event stream.

A runner consumes the stream from the sequence after the one it recorded, and
applies each batch of events in ONE SQL transaction that also records the last
applied sequence; a redelivered event (sequence <= recorded) is skipped. On
start a service catches up from its recorded sequence; ``rebuild`` drops the
read models (Alembic down to base, then up) and replays from zero.

Nothing in the stream can stop a runner. A message that is not a readable
commit (``PoisonCommit``), and a commit whose ``apply`` raises, are set aside:
recorded in the service's quarantine table (in the batch's transaction, so a
rebuild records the same rows), counted and logged; each commit is applied in
its own SAVEPOINT, so a failing one rolls back alone. Database trouble that may
pass (locked, connection lost) is retried, never set aside.

Batches are applied in the runner's own thread: the event loop keeps serving
RPCs and heartbeats while a large batch is written. Batches stay in order (one
at a time); ``position`` moves on the loop once a batch is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import Connection, Engine, MetaData, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from . import tracing
from .db import downgrade_to_base, quarantine_table, tracking_table, upgrade
from .eventstore import PoisonCommit, RecordedEvent, decode_commit
from .metrics import QUARANTINED, Counters
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

    ``apply`` may raise on an event's data: the runner rolls that commit back and sets it
    aside. It runs in the runner's thread, so it must not touch the event loop.

    ``subjects``: the subject prefixes of the commits it reads (``capstan.evt.model.``), or None for
    every commit. When every projection of a runner names its own, commits on other subjects are not
    even decoded: the position moves past them, and their events reach no ``on_batch`` listener.
    """

    subjects: tuple[str, ...] | None = None

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        raise NotImplementedError

    def apply_many(self, conn: Connection, records: Sequence[RecordedEvent]) -> None:
        for rec in records:
            self.apply(conn, rec)


def wanted_subjects(projections: Sequence[Projection]) -> tuple[str, ...] | None:
    """The subject prefixes any of these projections reads; None: every subject."""
    if not projections or any(p.subjects is None for p in projections):
        return None
    return tuple(sorted({s for p in projections for s in p.subjects or ()}))


def reads(projections: Sequence[Projection], subject: str) -> bool:
    """Whether a runner of these projections decodes (and so may set aside) a commit on ``subject``."""
    wanted = wanted_subjects(projections)
    return wanted is None or subject.startswith(wanted)


_tables = MetaData()
_tracking = tracking_table(_tables)
_quarantine = quarantine_table(_tables)
ERROR_MAX_CHARS = 2000


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


def is_transient(e: BaseException) -> bool:
    """Database trouble that may pass (locked, connection lost, out of memory): retried, never set aside.
    Anything else an ``apply`` raises depends on the event's data, so it would fail again on every replay."""
    err: BaseException | None = e
    while err is not None:
        if isinstance(err, (OperationalError, InterfaceError, MemoryError)):
            return True
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            return True
        err = err.__cause__
    return False


def _error_text(e: BaseException) -> str:
    """The error without SQLAlchemy's SQL, parameters and links: the driver's own message is the point."""
    inner = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    text = f"{type(inner).__name__}: {inner}"
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 3] + "..."


@dataclass(frozen=True)
class _Commit:
    """One message of a batch: its events, or why it cannot be read."""

    seq: int
    subject: str
    stored_ms: int
    records: list[RecordedEvent]
    poison: PoisonCommit | None = None


@dataclass(frozen=True)
class SetAside:
    seq: int
    subject: str
    kind: str
    error: str
    stored_ms: int


def _stored_ms(m: Msg) -> int:
    """When the stream stored the message (the same on every delivery), from the ack reply's nanoseconds."""
    tokens = (m.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7]) // 1_000_000
    return int(m.metadata.timestamp.timestamp() * 1000)


def _storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL, and an error may quote a key the poison chose."""
    return text.replace("\x00", "\\x00")


def record_set_aside(conn: Connection, projection: str, items: Sequence[SetAside]) -> None:
    """Write quarantine rows (in the caller's transaction); a row already there stays as it is."""
    if not items:
        return
    rows = [
        dict(projection=projection, seq=a.seq, subject=_storable(a.subject)[:255], kind=a.kind,
             error=_storable(a.error)[:ERROR_MAX_CHARS], stored_at_ms=a.stored_ms)
        for a in items
    ]
    insert = postgresql.insert(_quarantine) if conn.dialect.name == "postgresql" else sqlite.insert(_quarantine)
    conn.execute(insert.on_conflict_do_nothing(index_elements=["projection", "seq"]), rows)


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
        counters: Counters | None = None,
    ) -> None:
        self.name = name
        self._js = js
        self._engine = engine
        self._projections = list(projections)
        self._wanted = wanted_subjects(self._projections)  # other commits are skipped undecoded
        self._stream = stream
        self._filter = filter_subject
        self._batch_max = batch_max
        self._tracer = tracing.tracer(service)
        self.counters = counters or Counters()
        self._task: asyncio.Task[None] | None = None
        # One thread of its own: batches stay in order, and slow queries elsewhere never delay them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"projection-{name}")
        self._advanced = asyncio.Condition()
        self._listeners: list[Callable[[int], None]] = []
        self._batch_listeners: list[Callable[[int, Sequence[RecordedEvent]], None]] = []
        self.live = False  # spans per event only once caught up (not during a rebuild)
        with engine.connect() as conn:
            self.position = read_position(conn, name)

    def on_advance(self, fn: Callable[[int], None]) -> None:
        """Call ``fn(position)`` after every applied batch (wakes reconcile loops)."""
        self._listeners.append(fn)

    def on_batch(self, fn: Callable[[int, Sequence[RecordedEvent]], None]) -> None:
        """Call ``fn(position, records)`` on the event loop after every applied batch, with the events it
        applied (quarantined commits left out): a listener can react to what changed, not only that
        something did."""
        self._batch_listeners.append(fn)

    # -- consuming -----------------------------------------------------------
    async def _subscribe(self) -> JetStreamContext.PushSubscription:
        start = self.position + 1
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
        return await self._js.subscribe(self._filter, stream=self._stream, ordered_consumer=True, config=cfg)

    def _apply_batch(self, msgs: list[Msg]) -> tuple[int, list[RecordedEvent]]:
        """Apply a batch in one transaction (runs in the runner's thread); returns the position reached and
        the events applied. Raises only what ``is_transient`` says may pass: nothing is written then."""
        commits: list[_Commit] = []
        seen = self.position
        for m in msgs:
            seq = _stream_seq(m)
            if seq <= self.position:
                continue  # duplicate delivery: already applied
            seen = max(seen, seq)
            if self._wanted is not None and not m.subject.startswith(self._wanted):
                continue  # no projection here reads it
            try:
                commits.append(_Commit(seq, m.subject, _stored_ms(m), decode_commit(seq, m.subject, m.data, m.headers)))
            except PoisonCommit as e:
                commits.append(_Commit(seq, m.subject, _stored_ms(m), [], e))
        if not commits:
            # Nothing to write: the recorded position stays at the last commit applied (a restart skips
            # the rest again), so it is the same however the log was cut into batches (live or rebuilt).
            return seen, []
        last = commits[-1].seq
        with self._engine.begin() as conn:
            if read_position(conn, self.name) >= last:
                return max(last, seen), []  # another runner (a rebuild) got there first
            aside = self._apply_commits(conn, commits)
            record_set_aside(conn, self.name, aside)
            write_position(conn, self.name, last)
        for a in aside:  # once committed: a batch retried after a transient error counts once
            log.error("projection %s set aside commit %d on %s (%s): %s", self.name, a.seq, a.subject, a.kind, a.error)
            self.counters.inc(QUARANTINED, projection=self.name, kind=a.kind)
        skipped = {a.seq for a in aside}
        return seen, [r for c in commits if c.poison is None and c.seq not in skipped for r in c.records]

    def _apply_commits(self, conn: Connection, commits: list[_Commit]) -> list[SetAside]:
        aside = [SetAside(c.seq, c.subject, c.poison.kind, c.poison.error, c.stored_ms) for c in commits if c.poison]
        good = [c for c in commits if c.poison is None]
        if good:
            # The whole batch in one savepoint (catching up: through apply_many; live: commit by commit, for
            # the spans). Should it fail, find the culprit below, one commit at a time, each in its own.
            try:
                with conn.begin_nested():
                    if self.live:
                        for c in good:
                            self._apply_commit(conn, c)
                    else:
                        records = [r for c in good for r in c.records]
                        for p in self._projections:
                            p.apply_many(conn, records)
                return aside
            except Exception as e:
                if is_transient(e):
                    raise
        for c in good:
            try:
                with conn.begin_nested():
                    self._apply_commit(conn, c)
            except Exception as e:
                if is_transient(e):
                    raise
                types = ", ".join(r.event.TYPE or type(r.event).__name__ for r in c.records)
                aside.append(SetAside(c.seq, c.subject, "apply_failed", f"applying {types}: {_error_text(e)}",
                                      c.stored_ms))
        return sorted(aside, key=lambda a: a.seq)

    def _apply_commit(self, conn: Connection, c: _Commit) -> None:
        if not self.live:
            for p in self._projections:
                p.apply_many(conn, c.records)
            return
        # Live: one span per event, continuing the trace of the command that appended it.
        for rec in c.records:
            with tracing.attached(tracing.extract(rec.headers)), self._tracer.start_as_current_span(
                f"project {rec.event.TYPE}", attributes={"capstan.seq": rec.seq}
            ):
                for p in self._projections:
                    p.apply(conn, rec)

    async def _apply(self, batch: list[Msg]) -> tuple[int, list[RecordedEvent]]:
        """Apply one batch off the event loop; database trouble that may pass is retried until it does."""
        delay = 0.1
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor, self._apply_batch, batch)
            except Exception as e:
                if not is_transient(e):
                    raise
                log.warning("projection %s: the database failed (%s); retrying in %.1fs", self.name, _error_text(e), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
                    new_pos, records = await self._apply(batch)
                    if new_pos > self.position:
                        self.position = new_pos
                        async with self._advanced:
                            self._advanced.notify_all()
                        for fn in self._listeners:
                            fn(new_pos)
                        for batch_fn in self._batch_listeners:
                            batch_fn(new_pos, records)
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
        """Stop consuming; a batch already in the runner's thread finishes (it commits or rolls back whole)."""
        if self._task:
            await cancel_and_wait([self._task])
            self._task = None
        await asyncio.to_thread(self._executor.shutdown)

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
    try:
        await runner.catch_up()
    finally:
        await runner.stop()
    return runner.position
