#!/usr/bin/env python
"""Heavy preemption, side by side: the working tree's scheduling core vs a baseline revision's.

  .venv/bin/python scripts/bench_preemption.py --baseline aee64c5            # 1,000 nodes, 200 preemptors
  .venv/bin/python scripts/bench_preemption.py --baseline aee64c5 --nodes 5000 --pending 1000

Scenario (``capstan_scheduler.sim.full_pool``): every card of N nodes x 8 A100 is held by P6..P9 training
(4 items per node on average, fractions sharing cards); the pending P0..P3 items (every tenth a gang of 2..4,
every seventh a service) can only start by preempting. One cycle, queue mode 2, preemption on. The baseline's
``domain/core`` is taken from git (``git archive``) and imported as a separate package, so both run in this
process on the same machine, alternating, ``--repeat`` times each. Figures per core: decisions/s (pending
items decided / cycle wall time) and per-item latency p50/p99/max (the core's time on one item, timed by
wrapping the cycle's per-item step ``_Cycle.admit``), the best of the repeats; then the ratios.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "scheduler" / "src"))

from capstan_scheduler.domain import core as current  # noqa: E402
from capstan_scheduler.sim import full_pool  # noqa: E402
from capstan_scheduler.sim.engine import percentile  # noqa: E402

CORE_PATH = "services/scheduler/src/capstan_scheduler/domain/core"


def load_baseline(rev: str, into: Path) -> ModuleType:
    tar = subprocess.run(["git", "archive", rev, CORE_PATH], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    pkg = into / CORE_PATH
    spec = importlib.util.spec_from_file_location("core_baseline", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["core_baseline"] = mod
    spec.loader.exec_module(mod)
    return mod


def run_once(core: ModuleType, nodes: int, pending: int) -> dict[str, object]:
    snap = full_pool.build(core, nodes, pending)
    cycle = sys.modules[core.__name__ + ".cycle"]
    admit = cycle._Cycle.admit  # noqa: SLF001
    per_item: list[float] = []

    def timed(self, it):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        admit(self, it)
        per_item.append(time.perf_counter() - t0)

    cycle._Cycle.admit = timed  # noqa: SLF001
    gc.collect()
    try:
        start = time.perf_counter()
        d = core.schedule(snap, 2, True, now=0)
        took = time.perf_counter() - start
    finally:
        cycle._Cycle.admit = admit  # noqa: SLF001
    per_item.sort()
    return {"decisions_s": pending / took, "p50_ms": percentile(per_item, 50) * 1000,
            "p99_ms": percentile(per_item, 99) * 1000, "max_ms": per_item[-1] * 1000,
            "victims": len(d.preemptions), "cycle_s": took,
            "decided": (tuple((p.victim_id, p.preemptor_id) for p in d.preemptions), tuple(sorted(d.placements)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="git revision whose scheduling core is the baseline")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pending", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
        best: dict[str, dict[str, Any]] = {}
        for i in range(args.repeat):
            for name, core in (("current", current), (f"baseline {args.baseline}", baseline)):
                r = run_once(core, args.nodes, args.pending)
                print(f"run {i + 1} {name:>18}: {r['decisions_s']:8,.0f} decisions/s  p99 {r['p99_ms']:6.1f} ms  "
                      f"victims {r['victims']}", file=sys.stderr)
                b = best.get(name)
                if b is None or r["cycle_s"] < b["cycle_s"]:
                    best[name] = r
    print(f"{args.nodes} nodes full, {args.pending} preemptors (best of {args.repeat}):")
    print(f"{'core':>20} {'decisions/s':>12} {'item p50 ms':>12} {'item p99 ms':>12} {'item max ms':>12} {'victims':>8}")
    for name, r in best.items():
        print(f"{name:>20} {r['decisions_s']:12,.0f} {r['p50_ms']:12.2f} {r['p99_ms']:12.2f} {r['max_ms']:12.1f} "
              f"{r['victims']:8.0f}")
    cur, base = best["current"], best[f"baseline {args.baseline}"]
    print(f"ratio current/baseline: decisions/s x{cur['decisions_s'] / base['decisions_s']:.2f}, "
          f"item p99 x{cur['p99_ms'] / base['p99_ms']:.2f}")
    same = cur["decided"] == base["decided"]
    print("decisions (victims per preemptor, placements):", "identical" if same else "DIFFERENT")


if __name__ == "__main__":
    main()
