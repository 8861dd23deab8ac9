#!/usr/bin/env python
"""Replay a workload trace on the real scheduling core and compare queue modes (docs/simulation.md).

  .venv/bin/python scripts/simulate.py --synthetic --nodes 500 --tasks 20000 --seed 1 --modes 0,1,2
  .venv/bin/python scripts/simulate.py --trace trace.jsonl --modes 0,2
  .venv/bin/python scripts/simulate.py --cpu-csv jobs.csv --csv-nodes 200 --modes 0,2
  .venv/bin/python scripts/simulate.py --trace recorded.jsonl --what-if --policy '{"ResourceRule": {...}}'
  .venv/bin/python scripts/simulate.py --event-log events.jsonl --policy '{"ResourceRule": {...}}'

--event-log takes an export of a running Capstan's event log (scripts/export_events.py), converts it to a trace
(capstan_scheduler.sim.eventlog) and prints the recorded figures next to the simulated ones, with their ratio.
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
from capstan_scheduler.sim.eventlog import Conversion, format_comparison, from_event_log, load_event_log  # noqa: E402
from capstan_scheduler.snapshot import DEFAULT_SHAREABLE  # noqa: E402


def _policy_arg(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    policy = json.loads(raw)
    if not isinstance(policy, dict):
        raise SystemExit("--policy must be a JSON object")
    return policy


def _conversion(args: argparse.Namespace) -> Conversion:
    shareable = (DEFAULT_SHAREABLE if args.shareable_gpu_types is None
                 else frozenset(t.strip() for t in args.shareable_gpu_types.split(",") if t.strip()))
    return from_event_log(load_event_log(args.event_log), shareable=shareable, end_ms=args.log_end_ms,
                          source=str(args.event_log))


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
    src.add_argument("--event-log", help="an exported event log (scripts/export_events.py): replay it, recorded vs "
                                         "simulated; with --policy also under that policy")
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--load", type=float, default=1.0, help="offered GPU demand / capacity over the arrivals")
    p.add_argument("--scale", type=float, default=1.0, help="multiply --nodes and --tasks (e.g. 0.25)")
    p.add_argument("--csv-nodes", type=int, default=100)
    p.add_argument("--csv-node-cpu", type=float, default=64)
    p.add_argument("--csv-node-memory-gib", type=float, default=256)
    p.add_argument("--csv-memory-unit-gib", type=float, default=1.0, help="GiB per unit of the memory column")
    p.add_argument("--modes", help="queue modes to compare, or 'policy' for each group's own "
                                   "(default 0,1,2; with --event-log: policy)")
    p.add_argument("--preemption", choices=("on", "off", "policy"), default="policy")
    p.add_argument("--grace", type=float, help="seconds a preempted task takes to leave "
                                               "(default 0; with --event-log: the recorded median)")
    p.add_argument("--cycle-interval", type=float,
                   help="seconds between scheduling cycles (0: a cycle at every event time; default 60, "
                        "with --event-log 1, the scheduler service's period)")
    p.add_argument("--what-if", action="store_true",
                   help="replay --trace or --event-log under --policy next to its own policy")
    p.add_argument("--policy", help="SPEC §7.1 policy JSON (or @file) for the what-if run (implies --what-if)")
    p.add_argument("--shareable-gpu-types", help="--event-log: card types split into tenths on nodes whose "
                                                 "NodeJoined does not say (default: the scheduler's default)")
    p.add_argument("--log-end-ms", type=int, help="--event-log: the end of the log (epoch ms) up to which "
                                                 "still-running work is counted (default: its last event)")
    p.add_argument("--save-trace", help="write the trace used (JSON Lines) to this file")
    p.add_argument("--json", help="write the figures as JSON to this file")
    args = p.parse_args(argv)
    log = bool(args.event_log)
    what_if = args.what_if or args.policy is not None
    if what_if and not (args.trace or log) or args.what_if and not args.policy:
        p.error("--what-if needs --trace or --event-log, and --policy")

    conv = _conversion(args) if log else None
    trace = conv.trace if conv is not None else _trace(args)
    if args.modes is None:
        args.modes = "policy" if log else "0,1,2"
    if args.cycle_interval is None:
        args.cycle_interval = 1.0 if log else 60.0
    if args.grace is None:
        args.grace = round(conv.recorded_grace_s, 3) if conv is not None else 0.0
    if args.save_trace:
        save(trace, args.save_trace)
    nodes = len(trace.nodes)
    cards = sum(sum(n.cards.values()) for n in trace.nodes)
    print(f"trace: {nodes} nodes, {cards} cards, {len(trace.workloads)} workloads; "
          f"cycle interval {args.cycle_interval:g} s, grace {args.grace:g} s, preemption {args.preemption}",
          flush=True)
    if conv is not None:
        left = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in conv.left_out.items())
        print(f"event log: left out {left}; {len(conv.still_running)} still running and "
              f"{len(conv.queued_again_at_end)} queued again at the end (measured up to it); "
              f"nodes dropped {len(conv.dropped_nodes)}, not trainer nodes {len(conv.skipped_nodes)}"
              + (f"; later policy edits ignored: {conv.policy_changes_ignored}" if conv.policy_changes_ignored else ""),
              flush=True)
    results: dict[str, SimResult] = {}
    if what_if:
        policy = _policy_arg(args.policy)
        try:
            policy = validate_policy(policy)
        except InvalidArgument as e:
            raise SystemExit(f"invalid --policy: {e}") from None
        results["replay" if log else "recorded policy"] = _run(trace, args, None)
        results["what-if" if log else "what-if policy"] = _run(trace.with_policy(policy), args, None)
    else:
        modes: list[int | None] = [None] if args.modes == "policy" else [int(m) for m in args.modes.split(",")]
        for m in modes:
            name = ("replay" if log else "policy") if m is None else f"mode {m}"
            results[name] = _run(trace, args, m)
            print(f"  {name}: {results[name].wall_s:.1f} s", flush=True)
    print(format_comparison(conv.recorded, results) if conv is not None else format_table(results))
    if args.json:
        figures: dict[str, object] = {k: {**r.metrics(), "wall_s": round(r.wall_s, 2)} for k, r in results.items()}
        if conv is not None:
            figures = {"recorded": conv.recorded.metrics(), **figures}
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
