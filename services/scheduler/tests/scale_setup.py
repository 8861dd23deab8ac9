"""Build a scheduler's read models at scale quickly, for the event-loop latency test (issue #7, part 8).

Nodes join through real events (so a silent one would really turn Abnormal); the workloads (work running
on every card, and the pending queue) are written straight into the scheduler's tables, as its projection
would: ``scripts/bench_scheduler.py``'s pool shapes, with the pool full so a cycle decides every pending
item and appends nothing.
"""

from __future__ import annotations

import asyncio
import json
import random

from capstan_core.contracts.scheduling import NodeJoined, NodeStateChanged
from capstan_core.streams import event_subject
from capstan_scheduler.app import SchedulerApp
from capstan_scheduler.tables import allocations, workloads

CARD = "A100"
# (tenths of a card per instance, instances): fractions, 1/2/4/8 whole cards, CPU-only, gangs
SHAPES = ((1, 1), (2, 1), (3, 1), (5, 1), (10, 1), (20, 1), (40, 1), (80, 1), (0, 1), (80, 2))
POLICY = {
    "Version": "1.0",
    "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": 2, "Preempted": 0},
    "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "p", "Value": str(p)}], "ScheduleRule": {"Priority": p}}
                  for p in range(10)],
}


async def build(app: SchedulerApp, n_nodes: int, n_pending: int, seed: int = 7) -> tuple[str, list[str]]:
    """A group of ``n_nodes`` full nodes (64 cpu, 512 GiB, 8 x A100 each) and ``n_pending`` queued items.
    Returns (group id, node ids)."""
    rng = random.Random(seed)
    rg = (await app.create_resource_group(name="scale", description="", tags={}, policy_json=json.dumps(POLICY),
                                          creator="ops", idempotency_key="scale"))["id"]
    store, now = app.ctx.store, app.clock.now_ms()
    node_ids = [f"node-{i:05d}" for i in range(n_nodes)]

    async def join(node_id: str) -> int:
        events = [NodeJoined(node_id=node_id, resource_group_id=rg, name=node_id, agent_kind="trainer", cpu=64,
                             memory_gib=512, gpus={CARD: 8}, at_ms=now, shareable=[CARD] if node_id[-1] in "02468" else []),
                  NodeStateChanged(node_id=node_id, state="Running", reason="agent joined", at_ms=now)]
        return (await store.append(event_subject("node", node_id), events, expected_seq=0)).seq

    last = 0
    for i in range(0, n_nodes, 250):
        last = max(last, *await asyncio.gather(*(join(n) for n in node_ids[i:i + 250])))
    assert await app.ctx.runner.wait_for(last, timeout=120)
    await asyncio.to_thread(_write_workloads, app, rg, node_ids, n_pending, rng)
    return str(rg), node_ids


def _row(wid: str, rg: str, seq: int, tenths: int, count: int, status: str, rng: random.Random) -> dict[str, object]:
    gpu = tenths / 10
    cpu, mem = (8.0, 32.0) if not tenths else ((2.0, 16.0) if tenths < 10 else (4.0 * gpu, 64.0 * gpu))
    return dict(id=wid, kind="service" if status == "queued" and 0 < tenths <= 10 and rng.random() < 0.2 else "training",
                resource_group_id=rg, status=status, cpu=cpu, memory_gib=mem, gpu_type=CARD if tenths else "", gpu=gpu,
                instance_count=count, submitted_seq=seq, submitted_at_ms=seq, ended=False, subject_seq=0,
                trace_parent="", reason="", tags=json.dumps({"p": str(rng.randrange(10))}), started_at_ms=1,
                requeue=False)


def _write_workloads(app: SchedulerApp, rg: str, node_ids: list[str], n_pending: int, rng: random.Random) -> None:
    rows, allocs = [], []
    seq = 0
    for node_id in node_ids:  # every node full: two 4-card instances using all its cpu and memory
        for half in (0, 1):
            wid = f"run-{seq:06d}"
            rows.append({**_row(wid, rg, seq, 40, 1, "placed", rng), "cpu": 32.0, "memory_gib": 256.0})
            allocs.append(dict(workload_id=wid, idx=0, node_id=node_id, kind="training", cpu=32.0, memory_gib=256.0,
                               gpu_type=CARD, gpu=4.0, cards=json.dumps([[c, 10] for c in range(4 * half, 4 * half + 4)])))
            seq += 1
    for _ in range(n_pending):
        tenths, count = rng.choice(SHAPES)
        rows.append(_row(f"wl-{seq:06d}", rg, seq, tenths, count, "queued", rng))
        seq += 1
    with app.ctx.engine.begin() as conn:
        conn.execute(workloads.insert(), rows)
        conn.execute(allocations.insert(), allocs)
