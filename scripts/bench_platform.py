#!/usr/bin/env python
"""Control-plane speed of a real platform (issue #11), each figure printed with its aim.

Starts a platform with ``capstan up`` in a temporary data dir (nats-server with ``sync_interval:
always``, the four services, the gateway, one trainer agent with containment on: run as root), then:

  0. the raw event-store append rate on the same nats-server: ``EventStore.append`` with 64 in flight
     and raw ``js.publish`` of the same bytes, on a stream of their own (removed afterwards);
  1. submissions through REST: N single submits (Idempotency-Key each) from 16 concurrent clients into a
     resource group without nodes (they stay queued: the submit path alone); submits/s, p50, p99; then
     a sample is re-sent with its key (nothing more may be created) and read back at once
     (read-your-writes); then the batch route: a sweep of 500 in one request;
  2. starts and ends on the idle pool: one task ``true`` at a time; submit -> Running (the stream's time of
     the trainer's TrainingInstanceStarted commit minus the client's send time), Running -> Succeeded, and
     the agent's own cost (WorkloadPlaced -> TrainingTaskEnded, both stream times);
  3. throughput end to end: 200 trivial tasks from 16 clients, first submit -> all Succeeded; every task
     must end Succeeded exactly once, on its first attempt, with one start each;
  4. a scheduling cycle at 5,000 nodes / 50,000 pending with preemption and gangs: the scheduler service
     in this process on its own nats-server and SQLite (``services/scheduler/tests/scale_setup.py``'s
     setup with preemption on and priorities above the running work); the first cycle and the p50/max
     of the cycles after 2% churn each, and of quiet cycles (nothing changed);
  5. reads with 100,000 tasks in the trainer's read model (written to the log by this script, as ended
     tasks): list (first page, a deep keyset page, a filter) and get through REST, p50 and p99.

Usage (as root, from the repository root):
    .venv/bin/python scripts/bench_platform.py [--submits 400] [--clients 16] [--starts 20]
        [--e2e 200] [--read-tasks 100000] [--skip 4,5]
Figures and their analysis: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from capstan_core import credentials
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.training import TrainingTaskEnded, TrainingTaskSubmitted
from capstan_core.events import Event, event
from capstan_core.eventstore import EventStore, encode_commit
from capstan_core.natsserver import free_port
from capstan_core.service import connect_nats
from capstan_core.streams import EVENTS_STREAM, event_subject

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRIVIAL = {"cpu": 0.1, "memory_gib": 0.25}


# -- figures ---------------------------------------------------------------------------------------------
def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


@dataclass
class Figure:
    measure: str
    value: float
    unit: str
    aim: str = ""
    ok: bool | None = None

    def line(self) -> str:
        v = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:,.1f}"
        verdict = "" if self.ok is None else ("met" if self.ok else "NOT met")
        return f"  {self.measure:<58} {v:>10} {self.unit:<9} {self.aim:<16} {verdict}"


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)

    def add(self, measure: str, value: float, unit: str, aim: str = "", ok: bool | None = None) -> None:
        f = Figure(measure, value, unit, aim, ok)
        self.figures.append(f)
        print(f.line(), flush=True)

    def at_most(self, measure: str, value: float, unit: str, limit: float) -> None:
        self.add(measure, value, unit, f"<= {limit:g} {unit}", value <= limit)

    def at_least(self, measure: str, value: float, unit: str, limit: float) -> None:
        self.add(measure, value, unit, f">= {limit:g} {unit}", value >= limit)


def section(title: str) -> None:
    print(f"\n{title}", flush=True)


# -- the platform ----------------------------------------------------------------------------------------
@dataclass
class Platform:
    data_dir: Path
    port: int

    def cli(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(BIN / "capstan"), "--data-dir", str(self.data_dir), *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"capstan {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def nats_url(self) -> str:
        ports = json.loads((self.data_dir / "run" / "ports.json").read_text())
        return f"nats://127.0.0.1:{ports['nats']}"

    @property
    def default_rg(self) -> str:
        return (self.data_dir / "run" / "default-rg").read_text().strip()

    def client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        return httpx.AsyncClient(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=60,
                                 limits=limits)


def task_body(name: str, rg: str, command: str = "true", **extra: Any) -> dict[str, Any]:
    return {"name": name, "resource_group_id": rg, "command": command, "resources": dict(TRIVIAL), **extra}


class Watch:
    """Every training and workload commit, with the stream's time: an ordered consumer as admin."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.commits: list[tuple[float, str, str, list[dict[str, Any]]]] = []  # (time, kind, id, events)
        self.changed = asyncio.Event()
        self.seen: set[tuple[str, str]] = set()  # (aggregate id, event type)
        self._sub: Any = None

    async def start(self) -> None:
        cfg = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        self._sub = await self.js.subscribe("capstan.evt.>", stream=EVENTS_STREAM, ordered_consumer=True,
                                            config=cfg, cb=self._on, pending_msgs_limit=1_000_000,
                                            pending_bytes_limit=1 << 30)

    async def _on(self, msg: Any) -> None:
        _, _, kind, agg = msg.subject.split(".", 3)
        if kind not in ("train", "workload"):
            return
        t = msg.metadata.timestamp.timestamp()
        body = json.loads(msg.data)
        self.commits.append((t, kind, agg, body["events"]))
        self.seen.update((agg, e["type"]) for e in body["events"])
        self.changed.set()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def first(self, agg: str, etype: str) -> float | None:
        for t, _, a, events in self.commits:
            if a == agg and any(e["type"] == etype for e in events):
                return t
        return None

    def events_of(self, etype: str, ids: set[str]) -> list[tuple[str, dict[str, Any]]]:
        return [(a, e) for _, _, a, events in self.commits if a in ids for e in events if e["type"] == etype]

    async def until(self, cond: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        return True


# -- 0. the event store on the same server ---------------------------------------------------------------
@event("BenchAppended", version=1)
class BenchAppended(Event):
    task_id: str
    status: str
    at_ms: int


async def raw_append_rate(js: Any, report: Report, n: int = 4000, inflight: int = 64) -> float:
    stream = "CAPSTAN_BENCH"
    await js.add_stream(StreamConfig(name=stream, subjects=["capstan-bench.>"], storage=StorageType.FILE,
                                     duplicate_window=24 * 3600, allow_direct=True))
    try:
        store = EventStore(js, stream=stream)
        aggs = [f"capstan-bench.es.{i}" for i in range(inflight)]
        last = dict.fromkeys(aggs, 0)

        async def one(subject: str, i: int) -> None:
            ev = BenchAppended(task_id=subject, status="Running", at_ms=i)
            r = await store.append(subject, [ev], expected_seq=last[subject], msg_id=f"{subject}:{i}")
            last[subject] = r.seq

        t = time.perf_counter()
        for i in range(0, n, inflight):
            await asyncio.gather(*(one(s, i) for s in aggs))
        core = n / (time.perf_counter() - t)
        payload = encode_commit([BenchAppended(task_id="x" * 20, status="Running", at_ms=1)], 1)
        raw_subjects = [f"capstan-bench.raw.{i}" for i in range(inflight)]
        t = time.perf_counter()
        for _ in range(0, n, inflight):
            await asyncio.gather(*(js.publish(s, payload) for s in raw_subjects))
        raw = n / (time.perf_counter() - t)
    finally:
        await js.delete_stream(stream)
    report.add("event store: EventStore.append, 64 in flight", core, "appends/s")
    report.add("event store: raw js.publish, 64 in flight", raw, "appends/s")
    return core


# -- 1. submissions --------------------------------------------------------------------------------------
async def timed(fn: Callable[[], Awaitable[httpx.Response]], expect: int) -> tuple[float, httpx.Response]:
    t = time.perf_counter()
    r = await fn()
    dt = time.perf_counter() - t
    if r.status_code != expect:
        raise RuntimeError(f"{r.request.method} {r.request.url} answered {r.status_code}: {r.text[:500]}")
    return dt, r


async def submissions(p: Platform, watch: Watch, report: Report, n: int, clients: int, batch: int) -> None:
    async with p.client() as c:
        r = await c.post("/resource-groups", json={"name": f"bench-queue-{uuid.uuid4().hex[:6]}"})
        r.raise_for_status()
        rg = r.json()["id"]
        run = uuid.uuid4().hex[:8]
        keys = [f"{run}-{i}" for i in range(n)]
        latencies: list[float] = []
        ids: dict[str, str] = {}
        batch_ids: list[str] = []
        queue = list(enumerate(keys))

        async def client() -> None:
            while queue:
                i, key = queue.pop()
                dt, resp = await timed(lambda i=i, key=key: c.post(  # type: ignore[misc]
                    "/training-tasks", json=task_body(f"sub-{i}", rg), headers={"Idempotency-Key": key}), 201)
                latencies.append(dt)
                ids[key] = resp.json()["id"]

        # warm the connections (TLS channels and HTTP keep-alive) outside the timed run
        await asyncio.gather(*(c.get("/training-tasks", params={"page_size": 1}) for _ in range(clients)))
        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t
        report.at_least(f"{n} submits from {clients} clients: rate", n / wall, "submits/s", 300)
        report.at_most("  submit latency p50", pct(latencies, 50) * 1000, "ms", 20)
        report.at_most("  submit latency p99", pct(latencies, 99) * 1000, "ms", 100)
        report.add("  submit latency max", max(latencies) * 1000, "ms")
        # idempotency and read-your-writes, on a sample
        again = 0
        for key in keys[:: max(1, n // 20)]:
            resp = await c.post("/training-tasks", json=task_body("again", rg), headers={"Idempotency-Key": key})
            again += resp.status_code in (200, 201, 409) and (resp.status_code == 409 or resp.json()["id"] == ids[key])
            got = await c.get(f"/training-tasks/{ids[key]}")
            if got.status_code != 200:
                raise RuntimeError(f"read-your-writes: {ids[key]} answered {got.status_code}")
        total = (await c.get("/training-tasks", params={"resource_group_id": rg, "page_size": 1})).json()["total"]
        report.add(f"  tasks in the group after {n} submits + retries (must be {n})", total, "tasks", f"= {n}",
                   total == n)
        if batch:
            items = [task_body(f"sweep-{i}", rg, hyperparameters={"lr": i / 1000}) for i in range(batch)]
            dt, resp = await timed(lambda: c.post("/training-tasks/batch", json={"items": items},
                                                  headers={"Idempotency-Key": f"{run}-batch"}), 201)
            batch_ids = [item["id"] for item in resp.json()["items"]]
            created = len(batch_ids)
            report.add(f"batch submit of {batch} (one request)", dt * 1000, "ms")
            report.add("  batch submit rate", created / dt, "tasks/s")
        await c.delete(f"/resource-groups/{rg}")  # the queued tasks end (the group is gone)
        # The next measures are on an idle platform: wait until every task of the group has ended, and the
        # log has been quiet for a second (the scheduler's releases of the last ones come after the ends).
        every = [*ids.values(), *batch_ids]
        await watch.until(lambda: all((t, "TrainingTaskEnded") in watch.seen for t in every), 300)
        await watch.until(lambda: time.time() - (watch.commits[-1][0] if watch.commits else 0) > 1, 60)


# -- 2. starts and ends ----------------------------------------------------------------------------------
async def starts(p: Platform, watch: Watch, report: Report, n: int) -> None:
    to_running, to_end, agent_cost = [], [], []
    parts: list[tuple[float, float, float]] = []
    async with p.client() as c:
        await c.get("/training-tasks", params={"page_size": 1})
        for i in range(n):
            sent = time.time()
            r = await c.post("/training-tasks", json=task_body(f"start-{i}", p.default_rg))
            r.raise_for_status()
            tid = r.json()["id"]
            ok = await watch.until(lambda tid=tid: watch.first(tid, "TrainingTaskEnded") is not None, 60)  # type: ignore[misc]
            if not ok:
                raise RuntimeError(f"task {tid} did not end within 60 s")
            running = watch.first(tid, "TrainingInstanceStarted")
            ended = watch.first(tid, "TrainingTaskEnded")
            placed = watch.first(tid, "WorkloadPlaced")
            assert ended is not None and placed is not None
            if running is not None:
                to_running.append(running - sent)
                to_end.append(ended - running)
            agent_cost.append(ended - placed)
            # where the agent's cost goes, from the runner's own log lines (the same clock as the stream's)
            lines = (await c.get(f"/training-tasks/{tid}/logs")).json()["lines"]
            at = {key: datetime.fromisoformat(ln["time"]).timestamp() for ln in lines if ln["stream"] == "platform"
                  for key in ("contained", "exit code") if ln["line"].startswith(key)}
            if len(at) == 2:
                parts.append((at["contained"] - placed, at["exit code"] - at["contained"], ended - at["exit code"]))
            await asyncio.sleep(0.2)  # idle pool: the previous task's workload is released meanwhile
    report.at_most(f"one task `true`: submit -> Running p50 (n={n})", pct(to_running, 50) * 1000, "ms", 100)
    report.at_most("  submit -> Running max", max(to_running) * 1000, "ms", 300)
    report.add("  Running -> Succeeded p50", pct(to_end, 50) * 1000, "ms")
    report.at_most("  placement -> Succeeded p50 (the agent's own cost)", pct(agent_cost, 50) * 1000, "ms", 150)
    report.add("  placement -> Succeeded max", max(agent_cost) * 1000, "ms")
    if parts:
        report.add("    placement -> sandbox set up p50 (agent picks it up, inputs, runner, cgroup, network)",
                   pct([x[0] for x in parts], 50) * 1000, "ms")
        report.add("    sandbox set up -> exit code p50 (launcher, bwrap, `true`, teardown)",
                   pct([x[1] for x in parts], 50) * 1000, "ms")
        report.add("    exit code -> Succeeded p50 (agent sees it, saves output, reports; trainer ends the task)",
                   pct([x[2] for x in parts], 50) * 1000, "ms")


# -- 3. throughput end to end ----------------------------------------------------------------------------
async def end_to_end(p: Platform, watch: Watch, report: Report, n: int, clients: int) -> None:
    async with p.client() as c:
        await asyncio.gather(*(c.get("/training-tasks", params={"page_size": 1}) for _ in range(clients)))
        ids: list[str] = []
        queue = list(range(n))

        async def client() -> None:
            while queue:
                i = queue.pop()
                resp = await c.post("/training-tasks", json=task_body(f"e2e-{i}", p.default_rg),
                                    headers={"Idempotency-Key": f"e2e-{uuid.uuid4().hex}"})
                if resp.status_code != 201:
                    raise RuntimeError(f"submit answered {resp.status_code}: {resp.text[:300]}")
                ids.append(resp.json()["id"])

        t0 = time.time()
        await asyncio.gather(*(client() for _ in range(clients)))
        idset = set(ids)
        done = await watch.until(lambda: len({a for a, _ in watch.events_of("TrainingTaskEnded", idset)}) >= n, 300)
        ends = watch.events_of("TrainingTaskEnded", idset)
        last = max((t for t, _, a, ev in watch.commits if a in idset
                    and any(e["type"] == "TrainingTaskEnded" for e in ev)), default=time.time())
    wall = last - t0
    report.at_most(f"{n} trivial tasks from {clients} clients: first submit -> all Succeeded", wall, "s", 10)
    report.at_least("  tasks/s", n / wall, "tasks/s", 20)
    succeeded = {a for a, e in ends if e["data"]["status"] == "Succeeded"}
    starts_per = [a for a, _ in watch.events_of("TrainingInstanceStarted", idset)]
    requeues = watch.events_of("TrainingTaskRequeued", idset)
    clean = done and len(idset) == n and len(ends) == n and len(succeeded) == n and not requeues \
        and len(starts_per) == len(set(starts_per))
    report.add("  every task Succeeded once, first attempt, one start each", len(succeeded), "tasks", f"= {n}", clean)


# -- 4. scheduling cycle at scale ------------------------------------------------------------------------
def scale_cycles(report: Report, nodes: int, pending: int, churn_cycles: int) -> None:
    """In a child process of its own (its own nats-server and SQLite): see scripts/bench_cycle.py."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cycle.py"), "--nodes", str(nodes),
                           "--pending", str(pending), "--cycles", str(churn_cycles), "--json"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_cycle.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    size = f"{nodes:,} nodes / {pending:,} pending, preemption + gangs"
    report.add(f"scheduling cycle, {size}: first", r["first_s"], "s")
    report.at_most("  cycle after 2% churn p50", r["churn_p50_s"], "s", 1)
    report.at_most("  cycle max (every cycle, the first included)", r["max_s"], "s", 3)
    report.add("  quiet cycle p50 (nothing changed)", r["quiet_p50_s"], "s")
    report.add("  decisions equal to a full cycle's (incremental vs from scratch)", r["equal"], "cycles",
               f"= {r['compared']}", r["equal"] == r["compared"])


# -- 5. reads --------------------------------------------------------------------------------------------
async def reads(p: Platform, js: Any, report: Report, n: int, samples: int) -> None:
    rg = p.default_rg
    now = int(time.time() * 1000)
    existing = 0
    async with p.client() as c:
        existing = (await c.get("/training-tasks", params={"page_size": 1})).json()["total"]
        ids = [f"train-bench{uuid.uuid4().hex[:8]}{i:07d}" for i in range(n)]
        t = time.perf_counter()
        payloads = []
        for i, tid in enumerate(ids):
            sub = TrainingTaskSubmitted(
                task_id=tid, name=f"history-{i}", resource_group_id=rg, command="true", hyperparameters={"i": i},
                resources=ResourceSpec(cpu=0.1, memory_gib=0.25), instance_count=1, tags={"bench": "reads"},
                creator="admin" if i % 2 else "someone", stop_grace_seconds=30, at_ms=now - n + i)
            end = TrainingTaskEnded(task_id=tid, status="Succeeded" if i % 5 else "Failed", exit_code=0 if i % 5 else 1,
                                    at_ms=now - n + i + 1)
            payloads.append((event_subject("train", tid), encode_commit([sub, end], now)))
        for i in range(0, n, 512):
            await asyncio.gather(*(js.publish(s, b) for s, b in payloads[i:i + 512]))
        written = time.perf_counter() - t
        print(f"  ({n:,} ended tasks written to the log in {written:.1f} s; waiting for the read model)", flush=True)
        want = existing + n
        deadline = time.monotonic() + 1800
        while (await c.get("/training-tasks", params={"page_size": 1})).json()["total"] < want:
            if time.monotonic() > deadline:
                raise RuntimeError("the trainer's read model did not catch up")
            await asyncio.sleep(1)
        print(f"  (caught up after {time.perf_counter() - t:.1f} s)", flush=True)

        async def measure(name: str, call: Callable[[int], Awaitable[httpx.Response]]) -> None:
            lat = []
            for i in range(samples):
                dt, _ = await timed(lambda i=i: call(i), 200)  # type: ignore[misc]
                lat.append(dt)
            report.add(f"  {name}: p50", pct(lat, 50) * 1000, "ms")
            report.at_most(f"  {name}: p99", pct(lat, 99) * 1000, "ms", 25)

        report.add(f"reads with {want:,} tasks in the read model", want, "tasks")
        await measure("get one task", lambda i: c.get(f"/training-tasks/{ids[(i * 7919) % n]}"))
        await measure("list, first page of 50", lambda i: c.get("/training-tasks", params={"page_size": 50}))
        await measure("list, only mine + status Failed", lambda i: c.get(
            "/training-tasks", params={"page_size": 50, "only_mine": "true", "status": "Failed"}))
        token = ""
        for _ in range(20):  # walk 20 pages deep, then measure that page
            token = (await c.get("/training-tasks", params={"page_size": 500, "page_token": token})).json()[
                "next_page_token"]
        await measure("list, page 21 of 500 (keyset token)", lambda i: c.get(
            "/training-tasks", params={"page_size": 50, "page_token": token}))


# -- main ------------------------------------------------------------------------------------------------
async def run(args: argparse.Namespace, p: Platform, report: Report) -> None:
    admin = credentials.load_nats(p.data_dir / "secrets", "admin")
    nc = await connect_nats(p.nats_url, "bench", admin)
    js = nc.jetstream(timeout=30)
    watch = Watch(js)
    await watch.start()
    skip = {s for s in args.skip.split(",") if s}
    try:
        section("0. the event store on this platform's nats-server")
        await raw_append_rate(js, report)
        if "1" not in skip:
            section("1. submissions")
            await submissions(p, watch, report, args.submits, args.clients, args.batch)
        if "2" not in skip:
            section("2. starts and ends (idle pool, one trainer agent)")
            await starts(p, watch, report, args.starts)
        if "3" not in skip:
            section("3. throughput end to end")
            await end_to_end(p, watch, report, args.e2e, args.clients)
        if "5" not in skip:
            section("5. reads")
            await reads(p, js, report, args.read_tasks, args.read_samples)
    finally:
        await watch.stop()
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submits", type=int, default=400)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--batch", type=int, default=500, help="tasks in one batch request (0: skip)")
    ap.add_argument("--starts", type=int, default=20)
    ap.add_argument("--e2e", type=int, default=200)
    ap.add_argument("--read-tasks", type=int, default=100_000)
    ap.add_argument("--read-samples", type=int, default=200)
    ap.add_argument("--scale", default="5000x50000", help="NODESxPENDING of measure 4")
    ap.add_argument("--scale-cycles", type=int, default=5)
    ap.add_argument("--skip", default="", help="comma-separated measures to skip (1..5)")
    ap.add_argument("--keep", action="store_true", help="leave the platform's data dir (printed)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the trainer agent contains instances (cgroups, network namespaces, uids)", file=sys.stderr)
        return 2
    print(f"bench_platform: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}", flush=True)
    report = Report()
    data_dir = Path(tempfile.mkdtemp(prefix="capstan-bench-"))
    p = Platform(data_dir, free_port())
    t = time.perf_counter()
    try:
        p.cli("up", "--port", str(p.port))
        print(f"platform up in {time.perf_counter() - t:.1f} s ({data_dir})", flush=True)
        asyncio.run(run(args, p, report))
    finally:
        try:
            p.cli("down", timeout=120)
        finally:
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
    if "4" not in set(args.skip.split(",")):
        section("4. scheduling cycle at scale (the scheduler service in-process, its own nats-server)")
        nodes, pending = (int(x) for x in args.scale.lower().split("x"))
        scale_cycles(report, nodes, pending, args.scale_cycles)
    judged = [f for f in report.figures if f.ok is not None]
    missed = [f for f in judged if not f.ok]
    print(f"\n{len(judged) - len(missed)} of {len(judged)} aims met" + (
        ": not met: " + "; ".join(f.measure.strip() for f in missed) if missed else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
