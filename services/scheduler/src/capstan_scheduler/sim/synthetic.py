"""A seeded synthetic trace: a shareable A100 pool loaded by a Poisson stream of mixed training tasks and services.

Sizes per workload (share): fractional 0.1-0.5 of a card (25%), 1 card (25%), 2 (15%), 4 (12%), 8 (11%),
multi-node gangs of 2/3/4 x 8 cards (6%), CPU-only (6%). Services are 20% of the fractional/1-card
workloads. Priorities come from a ``tier`` tag through the group's TaskRules (P0..P9; untagged -> the
DefaultPriority, P5). Run times are log-normal (heavy-tailed, median ~30 min, mean ~1 h, 1 min .. 1 day).
Arrivals are Poisson, with the rate chosen so that offered GPU demand is ``load`` x the pool's capacity over
the arrival span.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .trace import GroupSpec, NodeSpec, Trace, WorkloadSpec

RG = "rsg-sim"
CARD = "A100"
NODE_CPU, NODE_MEM_GIB, CARDS_PER_NODE = 128, 1024, 8
# (gpu per instance, instances, weight); gpu 0 = CPU-only
SHAPES: tuple[tuple[float, int, float], ...] = (
    (0.1, 1, 5), (0.2, 1, 6), (0.3, 1, 5), (0.5, 1, 9), (1, 1, 25), (2, 1, 15), (4, 1, 12), (8, 1, 11),
    (8, 2, 3), (8, 3, 1.5), (8, 4, 1.5), (0, 1, 6),
)
TIER_WEIGHTS = (1, 2, 4, 8, 14, 30, 16, 12, 8, 5)  # P0..P9 (P5 is the untagged default)


def policy(queue: int = 2, preempted: int = 1) -> dict[str, Any]:
    rules = [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": f"p{p}"}], "ScheduleRule": {"Priority": p}}
             for p in range(10) if p != 5]
    return {"Version": "1.0", "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": queue, "Preempted": preempted},
            "TaskRules": rules}


def _resources(gpu: float) -> tuple[float, float]:
    if gpu == 0:
        return 8.0, 32.0
    if gpu < 1:
        return 2.0, 16.0
    return 12.0 * gpu, 96.0 * gpu


def generate(nodes: int = 500, tasks: int = 20_000, seed: int = 1, load: float = 1.0,
             queue: int = 2, preempted: int = 1) -> Trace:
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not secrets
    width = max(4, len(str(nodes - 1)))
    trace = Trace(meta={"source": "synthetic", "nodes": nodes, "tasks": tasks, "seed": seed, "load": load})
    trace.groups[RG] = GroupSpec(RG, policy(queue, preempted))
    trace.nodes = [NodeSpec(f"n-{i:0{width}d}", RG, NODE_CPU, NODE_MEM_GIB, {CARD: CARDS_PER_NODE}, (CARD,))
                   for i in range(nodes)]
    shapes = [(g, c) for g, c, _ in SHAPES]
    weights = [w for _, _, w in SHAPES]
    mu, sigma = math.log(1800), 1.1
    drawn = []
    demand = 0.0
    for _ in range(tasks):
        gpu, count = rng.choices(shapes, weights)[0]
        run = min(86400.0, max(60.0, rng.lognormvariate(mu, sigma)))
        run = float(round(run))
        kind = "service" if 0 < gpu <= 1 and rng.random() < 0.2 else "training"
        tier = rng.choices(range(10), TIER_WEIGHTS)[0]
        drawn.append((gpu, count, run, kind, tier))
        demand += gpu * count * run
    span = demand / (load * nodes * CARDS_PER_NODE)  # seconds over which the arrivals come
    mean_gap = span / max(1, tasks)
    t = 0.0
    for n, (gpu, count, run, kind, tier) in enumerate(drawn):
        cpu, mem = _resources(gpu)
        tags = {"tier": f"p{tier}"} if tier != 5 else {}
        trace.workloads.append(WorkloadSpec(
            f"w-{n:06d}", kind, RG, round(t, 3), run, cpu, mem, CARD if gpu else "", float(gpu), count, None, tags,
        ))
        t += rng.expovariate(1 / mean_gap)
    return trace
