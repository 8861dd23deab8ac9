#!/usr/bin/env python
"""Benchmark the core event store and projection runner against raw nats-py, side by side.

One process, one nats-server started here (``capstan_core.natsserver.start_nats``:
upstream nats-server with ``sync_interval: always`` when it supports it).

1. Appends/s: ``EventStore.append`` (one event per commit, per-aggregate subjects,
   ``expected_seq`` from the previous append on the subject, a ``Nats-Msg-Id``)
   vs raw ``js.publish`` of the same payload bytes to the same subjects, sequential
   and with N appends in flight (``asyncio.gather`` over slices of distinct subjects).
   A third column, "raw+hdrs", publishes with exactly the headers core sends: the
   gap raw -> raw+hdrs is the price of JetStream's checks (server and header
   encoding), raw+hdrs -> core is the library's own Python cost.
2. Projection rebuild events/s: ``ProjectionRunner.catch_up()`` into a fresh SQLite
   DB (and PostgreSQL with ``--postgres``) vs a raw ordered-consumer read of the
   same messages (``next_msg`` loop, decoding nothing); the note column adds a raw
   read that drains nats-py's buffer as the runner does (the transport's ceiling).
   Two projections of the same rows: one upsert per event (``apply``), and one
   ``executemany`` per batch (``apply_many``, how a projection that must rebuild fast
   is written). The rebuild aim is judged on the latter; both are printed.

Figures and their analysis: docs/benchmarks.md.

Usage:
    .venv/bin/python scripts/bench_eventstore.py [--events 100000] [--appends 10000]
        [--repeats 20] [--read-repeats 3] [--concurrency 64] [--aggregates 1000]
        [--rebuild-aggregates 10000] [--postgres] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from capstan_core import tracing
from capstan_core.db import make_engine, tracking_table
from capstan_core.events import Event, event
from capstan_core.eventstore import (
    HDR_EXPECTED_LAST_SUBJECT_SEQ,
    HDR_MSG_ID,
    EventStore,
    RecordedEvent,
    encode_commit,
)
from capstan_core.natsserver import server_version, start_nats
from capstan_core.projection import (
    Projection,
    ProjectionRunner,
    _take_buffered,
)
from capstan_core.streams import EVENTS_STREAM, EVENTS_SUBJECTS, ensure_streams, event_subject

APPEND_AIM = 0.80  # core appends/s >= 80% of raw
REBUILD_AIM = 20_000  # events/s on SQLite

# -- the event and projection a real service would have ----------------------------------------

STATUSES = ("pending", "scheduled", "running", "succeeded", "failed")


@event("BenchTaskStatusChanged")
class TaskStatusChanged(Event):
    status: str
    reason: str = ""
    attempt: int = 1


metadata = MetaData()
task_status = Table(
    "bench_task_status",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("changes", Integer, nullable=False),
    Column("last_seq", Integer, nullable=False),
)
tracking_table(metadata)


class TaskStatusProjection(Projection):
    """One row per task: its latest status and how many changes it saw. One upsert per event,
    the statement built once per dialect (SQLAlchemy caches its compiled form)."""

    def __init__(self) -> None:
        self._stmts: dict[str, Any] = {}

    def _upsert(self, dialect: str) -> Any:
        stmt = self._stmts.get(dialect)
        if stmt is None:
            ins = (postgresql if dialect == "postgresql" else sqlite).insert(task_status)
            stmt = ins.on_conflict_do_update(
                index_elements=[task_status.c.id],
                set_={
                    "status": ins.excluded.status,
                    "changes": task_status.c.changes + 1,
                    "last_seq": ins.excluded.last_seq,
                },
            )
            self._stmts[dialect] = stmt
        return stmt

    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        ev = rec.event
        if type(ev) is not TaskStatusChanged:
            return
        conn.execute(
            self._upsert(conn.dialect.name),
            {"id": rec.aggregate_id, "status": ev.status, "changes": 1, "last_seq": rec.seq},
        )


class BatchedTaskStatusProjection(TaskStatusProjection):
    """The same upsert, written for fast rebuilds: one executemany per batch (``apply_many``)."""

    def apply_many(self, conn: Connection, records: Sequence[RecordedEvent]) -> None:
        rows = [
            {"id": r.aggregate_id, "status": r.event.status, "changes": 1, "last_seq": r.seq}  # type: ignore[attr-defined]
            for r in records
            if type(r.event) is TaskStatusChanged
        ]
        if rows:
            conn.execute(self._upsert(conn.dialect.name), rows)


# -- helpers -------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    core: float
    raw: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.core / self.raw if self.raw else 0.0


@contextlib.contextmanager
def profiled(profile_dir: Path | None, name: str) -> Iterator[None]:
    if profile_dir is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        profile_dir.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(profile_dir / f"{name}.prof"))


async def timed(fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


def event_for(k: int) -> TaskStatusChanged:
    return TaskStatusChanged(status=STATUSES[k % len(STATUSES)], reason="bench", attempt=1 + k // 1000)


# -- 1. appends ----------------------------------------------------------------------------------


class AppendBench:
    def __init__(self, js: JetStreamContext, store: EventStore, aggregates: int) -> None:
        self.js = js
        self.store = store
        self.subjects = [event_subject("benchtask", f"t{i:05d}") for i in range(aggregates)]
        self.last: dict[str, int] = dict.fromkeys(self.subjects, 0)
        self.counter = 0

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    async def core_one(self, k: int, ev: Event) -> None:
        subject = self.subjects[k % len(self.subjects)]
        res = await self.store.append(subject, [ev], expected_seq=self.last[subject], msg_id=f"bench-{k}")
        self.last[subject] = res.seq

    async def raw_one(self, k: int, payload: bytes) -> None:
        subject = self.subjects[k % len(self.subjects)]
        ack = await self.js.publish(subject, payload)
        self.last[subject] = ack.seq

    async def raw_hdrs_one(self, k: int, payload: bytes) -> None:
        """Raw publish with the very headers core sends."""
        subject = self.subjects[k % len(self.subjects)]
        headers = {
            HDR_EXPECTED_LAST_SUBJECT_SEQ: str(self.last[subject]),
            HDR_MSG_ID: f"bench-{k}",
        }
        ack = await self.js.publish(subject, payload, headers=headers)
        self.last[subject] = ack.seq

    async def run(self, kind: str, n: int, concurrency: int) -> float:
        """Returns appends/s for ``n`` appends of ``kind`` (core|raw|raw+hdrs)."""
        ks = [self._next() for _ in range(n)]
        # Prepared outside the timing: the event objects a command handler hands core (core's
        # time includes encoding them), the payload bytes raw publishes (raw encodes nothing).
        events = {k: event_for(k) for k in ks} if kind == "core" else {}
        payloads = {k: encode_commit([event_for(k)], int(time.time() * 1000)) for k in ks} if kind != "core" else {}

        def one(k: int) -> Awaitable[None]:
            if kind == "core":
                return self.core_one(k, events[k])
            if kind == "raw":
                return self.raw_one(k, payloads[k])
            return self.raw_hdrs_one(k, payloads[k])

        async def go() -> None:
            if concurrency <= 1:
                for k in ks:
                    await one(k)
            else:
                # Slices of consecutive k touch distinct subjects (concurrency <= aggregates), so
                # every expected_seq in flight is right.
                for i in range(0, n, concurrency):
                    await asyncio.gather(*(one(k) for k in ks[i : i + concurrency]))

        return n / await timed(go)


async def bench_appends(js: JetStreamContext, args: argparse.Namespace, profile_dir: Path | None) -> list[Row]:
    store = EventStore(js)
    bench = AppendBench(js, store, args.aggregates)
    rows: list[Row] = []
    # Warm up: connections, compiled paths, the dedup map, a message on every subject.
    for kind in ("raw", "raw+hdrs", "core"):
        await bench.run(kind, min(args.aggregates, 1000), 64)
    for label, conc in (("sequential", 1), (f"{args.concurrency} in flight", args.concurrency)):
        rates: dict[str, list[float]] = {}
        # Interleave the kinds in short rounds (rotating who goes first) and take each kind's
        # median: fsync latency drifts, and short interleaved rounds expose every kind to it alike.
        per_round = max(1, args.appends // args.repeats)
        kinds = ["raw", "raw+hdrs", "core"]
        for r in range(args.repeats):
            for kind in kinds[r % 3 :] + kinds[: r % 3]:
                with profiled(profile_dir if kind == "core" and r == 0 else None, f"append-{conc}"):
                    rate = await bench.run(kind, per_round, conc)
                rates.setdefault(kind, []).append(rate)
        best = {kind: statistics.median(v) for kind, v in rates.items()}
        rows.append(Row(f"append, {label}", best["core"], best["raw"], f"raw+hdrs: {best['raw+hdrs']:.0f}/s"))
        print(
            f"  append {label:>14}: core {best['core']:8.0f}/s  raw {best['raw']:8.0f}/s  "
            f"raw+hdrs {best['raw+hdrs']:8.0f}/s  core/raw {best['core'] / best['raw']:.0%}",
            flush=True,
        )
    return rows


# -- 2. projection rebuild -----------------------------------------------------------------------


async def fill(js: JetStreamContext, n: int, aggregates: int) -> None:
    """Write ``n`` one-event commits as EventStore.append writes them (same payload format and
    headers, less the expected-sequence check so they can be pipelined: setup is not measured);
    aggregates get status changes round-robin."""
    subjects = [event_subject("task", f"task{i:05d}") for i in range(aggregates)]
    now = int(time.time() * 1000)
    payloads = {
        (s, a): encode_commit([TaskStatusChanged(status=s, reason="bench", attempt=a)], now)
        for s in STATUSES
        for a in range(1, n // aggregates + 2)
    }
    futs = []
    for k in range(n):
        subject = subjects[k % aggregates]
        headers = {HDR_MSG_ID: f"fill-{k}"}
        tracing.inject(headers)
        payload = payloads[(STATUSES[(k // aggregates) % len(STATUSES)], 1 + k // aggregates)]
        futs.append(await js.publish_async(subject, payload, stream=EVENTS_STREAM, headers=headers))
        if len(futs) >= 2000:
            await asyncio.gather(*futs)
            futs.clear()
    await asyncio.gather(*futs)


async def raw_read(js: JetStreamContext, n: int, drain: bool = False) -> None:
    """Read ``n`` messages, decoding nothing: one ``next_msg`` per message, or (``drain``)
    taking what nats-py already buffered as the projection runner does."""
    sub = await js.subscribe(
        EVENTS_SUBJECTS,
        stream=EVENTS_STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        got = 0
        while got < n:
            await sub.next_msg(timeout=5.0)
            got += 1
            if drain:
                got += len(_take_buffered(sub, n - got))
    finally:
        await sub.unsubscribe()


async def rebuild_once(js: JetStreamContext, url: str, n: int, aggregates: int, batched: bool = False) -> float:
    engine = make_engine(url)
    try:
        metadata.drop_all(engine)
        metadata.create_all(engine)
        projection = BatchedTaskStatusProjection() if batched else TaskStatusProjection()
        runner = ProjectionRunner("bench", js, engine, [projection], service="bench")
        secs = await timed(runner.catch_up)
        with engine.connect() as conn:
            rows, changes = conn.execute(select(func.count(), func.sum(task_status.c.changes))).one()
        if rows != aggregates or changes != n or runner.position != n:
            raise AssertionError(
                f"rebuild wrong: rows {rows}/{aggregates}, changes {changes}/{n}, pos {runner.position}"
            )
        return n / secs
    finally:
        engine.dispose()


async def bench_rebuild(
    js: JetStreamContext, args: argparse.Namespace, tmp: Path, profile_dir: Path | None
) -> list[Row]:
    n, aggregates = args.events, min(args.events, args.rebuild_aggregates)
    # The stream holds only the rebuild's events from here on (sequences 1..n after a purge
    # would not start at 1, so recreate the stream).
    await js.delete_stream(EVENTS_STREAM)
    await ensure_streams(js)
    t = await timed(lambda: fill(js, n, aggregates))
    info = await js.stream_info(EVENTS_STREAM)
    assert info.state.messages == n, info.state
    print(f"  filled {n} events on {aggregates} aggregates in {t:.1f}s ({n / t:.0f}/s pipelined)", flush=True)

    raw = drained = 0.0
    for _ in range(args.read_repeats):
        raw = max(raw, n / await timed(lambda: raw_read(js, n)))
        drained = max(drained, n / await timed(lambda: raw_read(js, n, drain=True)))
    print(
        f"  raw ordered-consumer read: {raw:8.0f} events/s (next_msg each), {drained:8.0f} events/s (drained)",
        flush=True,
    )

    rows: list[Row] = []
    targets = [("SQLite", f"sqlite:///{tmp / 'rebuild.sqlite'}")]
    pg_ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if args.postgres:
        from capstan_core.testing import postgres_server

        pg_ctx = postgres_server()
    with pg_ctx as pg:
        if pg is not None:
            targets.append(("PostgreSQL", pg.create_database()))
        for label, url in targets:
            best = 0.0
            for r in range(args.read_repeats):
                with profiled(profile_dir if r == 0 else None, f"rebuild-{label.lower()}"):
                    best = max(best, await rebuild_once(js, url, n, aggregates))
            print(f"  rebuild into {label:>10}: {best:8.0f} events/s  ({best / raw:.0%} of raw read)", flush=True)
            rows.append(Row(f"rebuild, {label}, apply", best, raw, f"raw read drained: {drained:.0f}/s"))
            best_b = 0.0
            for _ in range(args.read_repeats):
                best_b = max(best_b, await rebuild_once(js, url, n, aggregates, batched=True))
            print(f"  rebuild into {label:>10}, apply_many: {best_b:8.0f} events/s", flush=True)
            rows.append(Row(f"rebuild, {label}, apply_many", best_b, raw, "executemany per batch"))
    return rows


# -- main ----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="capstan-bench-"))
    profile_dir = Path(args.profile) if args.profile else None
    server = start_nats(tmp / "nats")
    try:
        ver = ".".join(map(str, server_version(server.binary)))
        print(f"nats-server {ver} at {server.binary}")
        print(f"sync_interval: always (fsync per write): {'ON' if server.sync_always else 'OFF'}")
        print(
            f"python {platform.python_version()}, nats-py {version('nats-py')}, {os.cpu_count()} CPUs, "
            f"{args.appends} appends per kind and mode in {args.repeats} rounds, {args.events} rebuild events",
            flush=True,
        )
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=10)
        await ensure_streams(js)
        t0 = time.perf_counter()
        print("appends:", flush=True)
        rows = await bench_appends(js, args, profile_dir)
        print("projection rebuild:", flush=True)
        rows += await bench_rebuild(js, args, tmp, profile_dir)
        await nc.close()
        elapsed = time.perf_counter() - t0
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        f"Results ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, nats-server {ver}, "
        f"sync always {'on' if server.sync_always else 'off'}, {os.cpu_count()} CPUs, {elapsed:.0f}s)"
    )
    head = f"| {'measure':<30} | {'core /s':>10} | {'raw /s':>10} | {'core/raw':>8} | {'aim':<22} | {'note':<30} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    ok = True
    for row in rows:
        if row.name.startswith("append"):
            aim_ok = row.ratio >= APPEND_AIM
            aim = f">= {APPEND_AIM:.0%} of raw: {'yes' if aim_ok else 'NO'}"
        elif "SQLite, apply_many" in row.name:
            aim_ok = row.core >= REBUILD_AIM
            aim = f">= {REBUILD_AIM:,}/s: {'yes' if aim_ok else 'NO'}"
        else:
            aim_ok, aim = True, "(no aim)"
        ok &= aim_ok
        print(
            f"| {row.name:<30} | {row.core:>10.0f} | {row.raw:>10.0f} | {row.ratio:>8.0%} | {aim:<22} | {row.note:<30} |"
        )
    print(f"\nall aims hold: {'yes' if ok else 'NO'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000, help="events to rebuild (default 100000)")
    p.add_argument(
        "--appends", type=int, default=10_000, help="appends per kind and mode, over all rounds (default 10000)"
    )
    p.add_argument(
        "--repeats", type=int, default=20, help="append rounds per measure; the median is kept (default 20)"
    )
    p.add_argument("--read-repeats", type=int, default=3, help="rounds per read/rebuild measure (default 3)")
    p.add_argument("--concurrency", type=int, default=64, help="appends in flight in the concurrent mode (default 64)")
    p.add_argument(
        "--aggregates", type=int, default=1000, help="aggregates the appends go round-robin over (default 1000)"
    )
    p.add_argument(
        "--rebuild-aggregates", type=int, default=10_000, help="aggregates of the rebuild events (default 10000)"
    )
    p.add_argument("--postgres", action="store_true", help="also rebuild into a throw-away PostgreSQL")
    p.add_argument("--profile", metavar="DIR", help="write cProfile stats of the core phases to DIR")
    args = p.parse_args(argv)
    if args.concurrency > args.aggregates:
        p.error("--concurrency must not exceed --aggregates (two appends in flight on one subject would conflict)")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
