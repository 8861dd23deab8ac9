#!/usr/bin/env python
"""The scheduler service's cycle at scale (issue #11, measure 4): 5,000 nodes / 50,000 pending, preemption + gangs.

The scheduler service runs in this process on a nats-server and SQLite of its own (started here), built
like ``services/scheduler/tests/scale_setup.py``: one group of N full nodes (8 x A100 each, every card
held by running training of priorities P0..P9), and M queued items (fractions, 1/2/4/8 cards, CPU-only,
2-node gangs of 8 cards; a fifth of the small ones services), with the group's policy in queue mode 2
and preemption ON, so a cycle plans victims. Measured, each a whole ``Scheduler.cycle()`` (read the read
models, decide, append the decisions, wait for the read models to hold them):

  first    the first cycle (decides the whole queue; appends its preemption requests and placements)
  churn    after each round of 2% churn: 2% of the running work ends (WorkloadWithdrawn, as the trainer
           would append it) and as many new items are submitted (WorkloadSubmitted), then one cycle
  quiet    a cycle right after another, nothing changed (the incremental cycle skips the group)
  equal    after each incremental cycle, a cycle from scratch (``full=True``) appends nothing more: the
           incremental one left nothing undecided

Prints a table, and with --json one line of figures for scripts/bench_platform.py.

Usage: .venv/bin/python scripts/bench_cycle.py [--nodes 5000] [--pending 50000] [--cycles 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "scheduler" / "tests"))

import scale_setup  # noqa: E402

from capstan_core.contracts.common import ResourceSpec  # noqa: E402
from capstan_core.contracts.scheduling import CAPABILITY_TRAINING, WorkloadSubmitted, WorkloadWithdrawn  # noqa: E402
from capstan_core.service import Service  # noqa: E402
from capstan_core.settings import ServiceSettings  # noqa: E402
from capstan_core.streams import event_subject  # noqa: E402
from capstan_core.testing import admin_store, make_secrets, start_secure_nats  # noqa: E402
from capstan_scheduler.app import SchedulerApp  # noqa: E402
from capstan_scheduler.reconcile import Scheduler  # noqa: E402
from capstan_scheduler.service import DEFINITION as SCHEDULER  # noqa: E402
from capstan_scheduler.settings import SchedulerSettings  # noqa: E402
from capstan_scheduler.tables import workloads  # noqa: E402


async def churn(app: SchedulerApp, rg: str, nats_url: str, secrets: Path, share: float, rng: random.Random,
                round_: int) -> None:
    """``share`` of the running work ends and as many new items arrive, through the event log."""
    with app.ctx.engine.connect() as conn:
        running = sorted(r.id for r in conn.execute(
            select(workloads.c.id).where(workloads.c.status.in_(("placed", "evicting")), workloads.c.ended.is_(False))))
    ended = rng.sample(running, max(1, int(len(running) * share)))
    now = app.clock.now_ms()
    async with admin_store(nats_url, secrets) as store:
        last = 0
        for i in range(0, len(ended), 256):
            seqs = await asyncio.gather(*(store.append(event_subject("train", w), [WorkloadWithdrawn(
                workload_id=w, reason="Succeeded", at_ms=now)], expected_seq=None) for w in ended[i:i + 256]))
            last = max(last, *(s.seq for s in seqs))
        new = [f"new-{round_}-{i:05d}" for i in range(len(ended))]

        def submitted(wid: str) -> WorkloadSubmitted:
            tenths, count = rng.choice(scale_setup.SHAPES)
            gpu = tenths / 10
            cpu, mem = (8.0, 32.0) if not tenths else ((2.0, 16.0) if tenths < 10 else (4.0 * gpu, 64.0 * gpu))
            return WorkloadSubmitted(
                workload_id=wid, kind="training", capability=CAPABILITY_TRAINING, resource_group_id=rg,
                resources=ResourceSpec(cpu=cpu, memory_gib=mem, gpu_type=scale_setup.CARD if tenths else "", gpu=gpu),
                instance_count=count, tags={"p": str(rng.randrange(10))}, at_ms=now)

        for i in range(0, len(new), 256):
            seqs = await asyncio.gather(*(store.append(event_subject("train", w), [submitted(w)], expected_seq=0)
                                          for w in new[i:i + 256]))
            last = max(last, *(s.seq for s in seqs))
    assert await app.ctx.runner.wait_for(last, timeout=300)


async def timed_cycle(sched: Scheduler, **kw: Any) -> tuple[float, int]:
    """(seconds, commits appended) of one cycle."""
    before = await sched.ctx.store.last_seq()
    t = time.perf_counter()
    await sched.cycle(**kw)
    return time.perf_counter() - t, await sched.ctx.store.last_seq() - before


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    secrets = make_secrets(tmp / "secrets")
    server = start_secure_nats(tmp / "nats", secrets)
    scale_setup.POLICY["ResourceRule"]["Preempted"] = 1  # preemption on (the setup's policy has it off)
    settings = SchedulerSettings(node_abnormal_after_s=3600, node_lost_after_s=7200)
    definition = dataclasses.replace(SCHEDULER, build=lambda ctx: SchedulerApp(ctx, settings=settings), background=[])
    svc = Service(definition, ServiceSettings(secrets_dir=secrets, data_dir=tmp / "s", nats_url=server.url))
    await svc.start()
    try:
        app: SchedulerApp = svc.app
        t = time.perf_counter()
        rg, _ = await scale_setup.build(app, args.nodes, args.pending)
        log(args, f"setup: {args.nodes:,} nodes, {args.pending:,} pending in {time.perf_counter() - t:.0f} s")
        sched = Scheduler(app)
        rng = random.Random(11)  # noqa: S311 - a reproducible benchmark, not secrets
        first, appended = await timed_cycle(sched)
        log(args, f"first cycle {first:.2f} s ({appended:,} decisions appended)")
        churned, quiet, equal = [], [], 0
        for c in range(args.cycles):
            await churn(app, rg, server.url, secrets, 0.02, rng, c)
            dt, appended = await timed_cycle(sched)
            churned.append(dt)
            q, _ = await timed_cycle(sched)
            quiet.append(q)
            _, more = await timed_cycle(sched, full=True)  # from scratch: nothing may be left to decide
            equal += more == 0
            log(args, f"churn cycle {c + 1}: {dt:.2f} s ({appended:,} appended); quiet {q:.3f} s; "
                f"a full cycle after it appended {more}")
        return {"first_s": first, "churn_p50_s": statistics.median(churned), "max_s": max([first, *churned, *quiet]),
                "quiet_p50_s": statistics.median(quiet), "equal": equal, "compared": args.cycles}
    finally:
        await svc.stop()
        server.stop()


def log(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pending", type=int, default=50000)
    ap.add_argument("--cycles", type=int, default=5, help="churn rounds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="capstan-cycle-"))
    try:
        r = asyncio.run(run(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"first {r['first_s']:.2f} s; after churn p50 {r['churn_p50_s']:.2f} s (aim <= 1 s); max {r['max_s']:.2f} s "
              f"(aim <= 3 s); quiet p50 {r['quiet_p50_s']:.3f} s; equal to from scratch {r['equal']}/{r['compared']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
