#!/usr/bin/env python
"""Scheduling speed of the pure core (issue #3, point 11): decisions per second and p99 decision latency.

  .venv/bin/python scripts/bench_scheduler.py                       # 1,000/10,000 and 5,000/50,000
  .venv/bin/python scripts/bench_scheduler.py --sizes 1000x10000 --cycles 10

For each size (nodes x pending) two scenarios, queue mode 2 (backfill across the queue):
  plain        an empty pool of N nodes x 8 A100 (half shareable); pending: fractional, 1/2/4/8-card and CPU
               items, preemption off.
  preempt+gang the pool filled with running P9 training (1/2/4/8 cards each); pending: P0..P8 items, 15% of
               them multi-node gangs (2..4 x 8 cards), 20% services; preemption on.
Cycle 1 decides the whole queue. Then, per further cycle, 2% of the running work finishes and as many new items
arrive (steady state), and one more cycle runs. A *decision* is one pending item decided by a cycle: started,
left queued with its reason, or given victims. Figures:
  decisions/s       pending items decided / cycle wall time, over all cycles
  per-item p99      time the core spent on one item inside a cycle (admission, placement, victim search),
                    timed by wrapping the cycle's per-item step; explanations and the lane summary are shared
                    per cycle and show in the per-cycle figures only
  per-cycle p50/max wall time of one schedule() call
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "scheduler" / "src"))

from capstan_scheduler.domain.core import (  # noqa: E402
    Card,
    InstanceAssignment,
    Item,
    Node,
    Request,
    Running,
    Snapshot,
    schedule,
)
from capstan_scheduler.domain.core import cycle as cycle_mod  # noqa: E402
from capstan_scheduler.sim.engine import percentile  # noqa: E402

CARD = "A100"
SHAPES = ((1, 1), (2, 1), (3, 1), (5, 1), (10, 1), (10, 1), (20, 1), (40, 1), (80, 1), (0, 1))
GANGS = ((80, 2), (80, 3), (80, 4))


def _nodes(n: int) -> tuple[Node, ...]:
    return tuple(Node(f"n{i:05d}", "rg", 128, 1024, tuple(Card(j, CARD) for j in range(8)),
                      frozenset({CARD}) if i % 2 else frozenset()) for i in range(n))


def _req(tenths: int) -> Request:
    if not tenths:
        return Request(8, 32)
    return Request(2 if tenths < 10 else 12 * tenths // 10, 16 if tenths < 10 else 96 * tenths // 10, CARD, tenths)


class Workload:
    def __init__(self, n_nodes: int, n_pending: int, preempt: bool, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible benchmark, not secrets
        self.nodes = _nodes(n_nodes)
        self.preempt = preempt
        self.seq = 0
        self.pending: dict[str, Item] = {}
        self.running: dict[str, Running] = {}
        if preempt:  # fill every card with running P9 training: 8 cards per node in 1/2/4/8-card pieces
            for n in self.nodes:
                j = 0
                while j < 8:
                    k = min(8 - j, self.rng.choice((1, 2, 4, 8)))
                    k = 1 << (k.bit_length() - 1)
                    it = Item(f"r{self.seq:07d}", "training", "rg", 9, self.seq, _req(10 * k))
                    self.seq += 1
                    self.running[it.id] = Running(it, (InstanceAssignment(n.id, tuple((c, 10) for c in
                                                                                     range(j, j + k))),), 0)
                    j += k
        for _ in range(n_pending):
            self.add()

    def add(self) -> None:
        r = self.rng
        if self.preempt and r.random() < 0.15:
            tenths, count = r.choice(GANGS)
        else:
            tenths, count = r.choice(SHAPES)
        kind = "service" if 0 < tenths <= 10 and r.random() < 0.2 else "training"
        prio = r.randrange(0, 9) if self.preempt else r.randrange(0, 10)
        it = Item(f"w{self.seq:07d}", kind, "rg", prio, self.seq, _req(tenths), count)  # type: ignore[arg-type]
        self.seq += 1
        self.pending[it.id] = it

    def apply(self, d, now: int) -> None:  # type: ignore[no-untyped-def]
        for iid, a in d.placements.items():
            self.running[iid] = Running(self.pending.pop(iid), a, now)
        for p in d.preemptions:  # victims leave at once (grace 0); they go back to the queue
            r = self.running.pop(p.victim_id, None)
            if r is not None:
                self.pending[r.item.id] = r.item

    def churn(self, share: float) -> None:
        ids = sorted(self.running)
        for iid in self.rng.sample(ids, max(1, int(len(ids) * share))):
            del self.running[iid]
            self.add()


def _timed_admit() -> tuple[list[float] | None, object]:
    """Wrap the cycle's per-item step to time each item (samples, original); (None, None) when the core has none."""
    cls = getattr(cycle_mod, "_Cycle", None)
    admit = getattr(cls, "admit", None)
    if cls is None or admit is None:
        return None, None
    samples: list[float] = []
    clock = time.perf_counter

    def timed(self, item):  # type: ignore[no-untyped-def]
        t = clock()
        try:
            return admit(self, item)
        finally:
            samples.append(clock() - t)

    cls.admit = timed
    return samples, admit


def bench(n_nodes: int, n_pending: int, preempt: bool, cycles: int, seed: int, mode: int) -> dict[str, float]:
    w = Workload(n_nodes, n_pending, preempt, seed)
    samples, original = _timed_admit()
    cycle_s: list[float] = []
    decided = placed = victims = 0
    try:
        for c in range(cycles):
            if c:
                w.churn(0.02)
            snap = Snapshot(w.nodes, tuple(w.running.values()), tuple(w.pending.values()))
            t = time.perf_counter()
            d = schedule(snap, mode, preempt, c)
            cycle_s.append(time.perf_counter() - t)
            decided += len(snap.pending)
            placed += len(d.placements)
            victims += len(d.preemptions)
            w.apply(d, c)
    finally:
        if samples is not None:
            cycle_mod._Cycle.admit = original  # type: ignore[method-assign]
    total = sum(cycle_s)
    return {
        "decisions_per_s": decided / total, "placements_per_s": placed / total, "placed": placed,
        "preemptions": victims, "decided": decided,
        "item_p99_ms": percentile(samples, 99) * 1000 if samples else float("nan"),
        "item_max_ms": max(samples) * 1000 if samples else float("nan"),
        "cycle_p50_ms": percentile(cycle_s, 50) * 1000, "cycle_max_ms": max(cycle_s) * 1000,
        "cycle1_ms": cycle_s[0] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000x10000,5000x50000", help="comma-separated NODESxPENDING")
    p.add_argument("--cycles", type=int, default=5, help="cycles per run (the first decides the whole queue)")
    p.add_argument("--mode", type=int, default=2, choices=(0, 1, 2))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scenarios", default="plain,preempt+gang")
    args = p.parse_args(argv)
    head = (f"{'nodes':>6} {'pending':>8} {'scenario':<13} {'decisions/s':>12} {'placed/s':>10} {'placed':>7} "
            f"{'victims':>7} {'item p99 ms':>11} {'item max ms':>11} {'cycle1 ms':>10} {'cycle p50 ms':>12} "
            f"{'cycle max ms':>12}  aim")
    print(head)
    ok = True
    for size in args.sizes.split(","):
        n, k = (int(x) for x in size.lower().split("x"))
        for scen in args.scenarios.split(","):
            pre = scen == "preempt+gang"
            r = bench(n, k, pre, args.cycles, args.seed, args.mode)
            floor = 500 if pre else 1000
            aims = [f"decisions/s >= {floor}: {'met' if r['decisions_per_s'] >= floor else 'NOT met'}"]
            if n <= 1000:
                aims.append(f"item p99 <= 10 ms: {'met' if r['item_p99_ms'] <= 10 else 'NOT met'}")
            ok &= all("NOT" not in a for a in aims)
            print(f"{n:>6} {k:>8} {scen:<13} {r['decisions_per_s']:>12,.0f} {r['placements_per_s']:>10,.0f} "
                  f"{r['placed']:>7} {r['preemptions']:>7} {r['item_p99_ms']:>11.3f} {r['item_max_ms']:>11.1f} "
                  f"{r['cycle1_ms']:>10.0f} {r['cycle_p50_ms']:>12.0f} {r['cycle_max_ms']:>12.0f}  "
                  f"{'; '.join(aims)}", flush=True)
    print("all aims met" if ok else "some aims not met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
