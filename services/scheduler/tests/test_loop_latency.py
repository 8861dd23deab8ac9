"""The scheduler's event loop is never blocked by a scheduling cycle (issue #7, part 8): at 5,000 nodes
and 50,000 pending items, RPCs and heartbeats are served while cycles run.

Marked ``scale``: building the read models and running three cycles of this size takes up to about a
minute on a 2-core machine.

Setup (``scale_setup.py``): one resource group of 5,000 nodes (joined through real events, so a silent
one really turns Abnormal), every card of every node busy with running work, and 50,000 queued items of
the benchmark's shapes in queue mode 2 with preemption off: each cycle reads and decides all 50,000 and
appends nothing. A cycle here takes several seconds (asserted below).

Heartbeat traffic, sized for a 2-core machine that also runs the cycle:
- Real agents heartbeat every 2 s against a 15 s threshold. Here the threshold is scaled DOWN to
  ``ABNORMAL_AFTER_S`` (3 s), shorter than one cycle on a 2-core machine (printed), so a loop blocked
  for a cycle would leave nodes silent past the threshold when the silent-node check runs right after
  it (tried: with the cycle run on the loop, nodes turn Abnormal and no call completes during a cycle).
- 100 nodes (2%) heartbeat through real gRPC from another process, every second, as agents do
  (``load_agents.py``); that process also calls ``GetResourceGroup`` every 50 ms and records, on the
  system-wide monotonic clock, when each call was sent and answered.
- The other 4,900 heartbeat through the same application method (``SchedulerApp.heartbeat``) from a
  task on the service's own event loop, in chunks of 100 that go at once, every node once a second
  (4,900 agents' gRPC clients at that rate would need more than two cores by themselves).
Three cycles run back to back, each followed by the silent-node check, as the service's loop does.
Proof: no node turns Abnormal; in-process sweeps finish and gRPC heartbeats are answered within every
cycle; and the gRPC calls sent and answered entirely within a cycle (at least 10, so they really overlap
it) answer within 100 ms: ``GetResourceGroup`` at the median and the 90th percentile, ``Heartbeat`` (it
shares its node-state query with the in-process heartbeats) at the median.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_scheduler.app import SchedulerApp
from capstan_scheduler.reconcile import Scheduler
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_scheduler.settings import SchedulerSettings
from capstan_scheduler.tables import nodes, workloads

from . import scale_setup

N_NODES, N_PENDING = 5_000, 50_000
GRPC_NODES = 100
GRPC_PERIOD_S = 1.0
ABNORMAL_AFTER_S = 3.0
CYCLES = 3
LATENCY_S = 0.1
SWEEP_S = 1.0  # each in-process node heartbeats once a second
CHUNK = 100

pytestmark = [pytest.mark.scale, pytest.mark.timeout(240)]


async def _until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _within(call: list[Any], spans: list[tuple[float, float]]) -> bool:
    return any(start <= call[0] and call[1] <= end for start, end in spans)


def _p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


async def test_rpcs_and_heartbeats_are_served_while_a_large_cycle_runs(
    tmp_path: Path, nats_server: Any, secrets_dir: Path
) -> None:
    settings = SchedulerSettings(node_abnormal_after_s=ABNORMAL_AFTER_S, node_lost_after_s=3600)
    definition = dataclasses.replace(SCHEDULER, build=lambda ctx: SchedulerApp(ctx, settings=settings), background=[])
    svc = Service(definition, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await svc.start()
    load: subprocess.Popen[bytes] | None = None
    bulk: asyncio.Task[None] | None = None
    try:
        app: SchedulerApp = svc.app
        rg, node_ids = await scale_setup.build(app, N_NODES, N_PENDING)
        with app.ctx.engine.connect() as conn:
            queued = conn.execute(select(func.count()).select_from(workloads).where(workloads.c.status == "queued"))
            assert queued.scalar() == N_PENDING
        after_setup = await app.ctx.store.last_seq()

        # agents in another process, through real gRPC
        grpc_nodes, bulk_nodes = node_ids[:GRPC_NODES], node_ids[GRPC_NODES:]
        (tmp_path / "nodes.json").write_text(json.dumps(grpc_nodes))
        out = tmp_path / "load" / "calls.json"
        out.parent.mkdir()
        load = subprocess.Popen([sys.executable, str(Path(__file__).parent / "load_agents.py"), svc.address, rg,
                                 str(tmp_path / "nodes.json"), str(out), str(secrets_dir), "--period", str(GRPC_PERIOD_S)])

        # the rest through the same app method, on the service's loop
        sweeps: list[float] = []

        async def heartbeat_the_rest() -> None:
            while True:
                start = time.monotonic()
                for i in range(0, len(bulk_nodes), CHUNK):
                    await asyncio.gather(*(app.heartbeat(n) for n in bulk_nodes[i:i + CHUNK]))
                sweeps.append(time.monotonic())
                await asyncio.sleep(max(0.0, SWEEP_S - (time.monotonic() - start)))

        bulk = asyncio.create_task(heartbeat_the_rest())
        await _until(lambda: (out.parent / "ready").exists() and len(sweeps) >= 2, 60, "every node to heartbeat")

        sched = Scheduler(app)
        spans: list[tuple[float, float]] = []
        for _ in range(CYCLES):
            start = time.monotonic()
            await sched.cycle(full=True)  # every group, every time: the test needs cycles of full size
            spans.append((start, time.monotonic()))
            await app.mark_silent_nodes_abnormal()  # right after the cycle, as the service's loop runs it
        bulk.cancel()
        load.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(load.wait, 30) == 0
        calls = json.loads(out.read_text())

        during = [c for c in calls["probes"] if _within(c, spans)]
        beats = [c for c in calls["beats"] if _within(c, spans)]
        latency = [c[1] - c[0] for c in during] or [float("inf")]
        beat_latency = [c[1] - c[0] for c in beats] or [float("inf")]
        report = (f"GetResourceGroup during cycles: n={len(during)} median={statistics.median(latency) * 1000:.1f} ms "
                  f"p90={_p90(latency) * 1000:.1f} ms; Heartbeat: n={len(beats)} "
                  f"median={statistics.median(beat_latency) * 1000:.1f} ms p90={_p90(beat_latency) * 1000:.1f} ms; "
                  f"cycles {[round(e - s, 2) for s, e in spans]} s; in-process sweeps every "
                  f"{[round(b - a, 2) for a, b in zip(sweeps, sweeps[1:], strict=False)]} s")
        print(report)

        # heartbeats kept being served through every cycle: in-process sweeps finished and gRPC ones answered
        for start, end in spans:
            assert any(start <= t <= end for t in sweeps), report
            assert any(start <= c[0] and c[1] <= end for c in beats), report
        with app.ctx.engine.connect() as conn:
            abnormal = conn.execute(select(func.count()).select_from(nodes).where(nodes.c.state != "Running")).scalar()
        assert abnormal == 0, report
        assert await app.ctx.store.last_seq() == after_setup, report  # no state change appended, nothing placed

        # the calls really overlapped the cycles, and were all answered
        assert len(during) >= 10 and len(beats) >= 10, report
        assert {c[2] for c in during} == {"ok"} and {c[2] for c in beats} == {"Running"}, report
        assert statistics.median(latency) < LATENCY_S and _p90(latency) < LATENCY_S, report
        # a heartbeat shares its node-state query with the 4,900 in-process ones: its median is the measure
        assert statistics.median(beat_latency) < LATENCY_S, report
    finally:
        if bulk is not None:
            bulk.cancel()
        if load is not None and load.poll() is None:
            load.kill()
        await svc.stop()
