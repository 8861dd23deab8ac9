#!/usr/bin/env python
"""Replay a workload trace on the real scheduling core and compare queue modes (docs/simulation.md).

  .venv/bin/python scripts/simulate.py --synthetic --nodes 500 --tasks 20000 --seed 1 --modes 0,1,2
  .venv/bin/python scripts/simulate.py --trace trace.jsonl --modes 0,2
  .venv/bin/python scripts/simulate.py --cpu-csv jobs.csv --csv-nodes 200 --modes 0,2
  .venv/bin/python scripts/simulate.py --trace recorded.jsonl --what-if --policy '{"ResourceRule": {...}}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services" / "scheduler" / "src"))

from capstan_core.errors import InvalidArgument  # noqa: E402
from capstan_scheduler.domain.policy import validate_policy  # noqa: E402
from capstan_scheduler.sim import SimResult, Trace, format_table, from_cpu_csv, generate, load, save  # noqa: E402
from capstan_scheduler.sim.engine import Simulator  # noqa: E402


def _policy_arg(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    policy = json.loads(raw)
    if not isinstance(policy, dict):
        raise SystemExit("--policy must be a JSON object")
    return policy


def _trace(args: argparse.Namespace) -> Trace:
    if args.trace:
        return load(args.trace)
    if args.cpu_csv:
        with open(args.cpu_csv, encoding="utf-8", newline="") as f:
            return from_cpu_csv(f, nodes=args.csv_nodes, node_cpu=args.csv_node_cpu,
                                node_memory_gib=args.csv_node_memory_gib, memory_unit_gib=args.csv_memory_unit_gib)
    nodes = max(1, round(args.nodes * args.scale))
    tasks = max(1, round(args.tasks * args.scale))
    return generate(nodes, tasks, args.seed, args.load)


def _run(trace: Trace, args: argparse.Namespace, mode: int | None) -> SimResult:
    pre = {"on": True, "off": False, "policy": None}[args.preemption]
    return Simulator(trace, mode=mode, preemption=pre, grace_s=args.grace,
                     cycle_interval_s=args.cycle_interval).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", help="a JSON Lines trace (docs/simulation.md)")
    src.add_argument("--synthetic", action="store_true", help="generate a seeded synthetic trace")
    src.add_argument("--cpu-csv", help="a CPU-only CSV trace: submit_time,duration,cpus,memory")
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--load", type=float, default=1.0, help="offered GPU demand / capacity over the arrivals")
    p.add_argument("--scale", type=float, default=1.0, help="multiply --nodes and --tasks (e.g. 0.25)")
    p.add_argument("--csv-nodes", type=int, default=100)
    p.add_argument("--csv-node-cpu", type=float, default=64)
    p.add_argument("--csv-node-memory-gib", type=float, default=256)
    p.add_argument("--csv-memory-unit-gib", type=float, default=1.0, help="GiB per unit of the memory column")
    p.add_argument("--modes", default="0,1,2", help="queue modes to compare, or 'policy' for each group's own")
    p.add_argument("--preemption", choices=("on", "off", "policy"), default="policy")
    p.add_argument("--grace", type=float, default=0.0, help="seconds a preempted task takes to leave")
    p.add_argument("--cycle-interval", type=float, default=60.0,
                   help="seconds between scheduling cycles (0: a cycle at every event time)")
    p.add_argument("--what-if", action="store_true", help="replay --trace under --policy next to its own policy")
    p.add_argument("--policy", help="SPEC §7.1 policy JSON (or @file) for --what-if")
    p.add_argument("--save-trace", help="write the trace used (JSON Lines) to this file")
    p.add_argument("--json", help="write the figures as JSON to this file")
    args = p.parse_args(argv)

    trace = _trace(args)
    if args.save_trace:
        save(trace, args.save_trace)
    nodes = len(trace.nodes)
    cards = sum(sum(n.cards.values()) for n in trace.nodes)
    print(f"trace: {nodes} nodes, {cards} cards, {len(trace.workloads)} workloads; "
          f"cycle interval {args.cycle_interval:g} s, grace {args.grace:g} s, preemption {args.preemption}",
          flush=True)
    results: dict[str, SimResult] = {}
    if args.what_if:
        if not args.trace or not args.policy:
            p.error("--what-if needs --trace and --policy")
        policy = _policy_arg(args.policy)
        try:
            policy = validate_policy(policy)
        except InvalidArgument as e:
            raise SystemExit(f"invalid --policy: {e}") from None
        results["recorded policy"] = _run(trace, args, None)
        results["what-if policy"] = _run(trace.with_policy(policy), args, None)
    else:
        modes: list[int | None] = [None] if args.modes == "policy" else [int(m) for m in args.modes.split(",")]
        for m in modes:
            name = "policy" if m is None else f"mode {m}"
            results[name] = _run(trace, args, m)
            print(f"  {name}: {results[name].wall_s:.1f} s", flush=True)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({k: {**r.metrics(), "wall_s": round(r.wall_s, 2)}
                                               for k, r in results.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
