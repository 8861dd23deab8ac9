"""Discrete-event simulator over the REAL scheduling core (``capstan_scheduler.domain.core.schedule``).

Events are arrivals, completions, evictions (a preempted task leaves after ``grace_s``) and node changes (a node
with a ``join`` time starts taking work then; one with a ``leave`` time takes no new work from then on). After the events
of one instant, every resource group whose state changed and which has waiting work gets one scheduling cycle
on its current Snapshot, with its own queue mode and preemption switch (or the overrides). The cycle's
placements start at once; its preemptions mark the victims evicting; an evicted training task goes back to the
queue as the same Item (same priority, same ``submit_seq``) with its remaining run time. The clock is the
simulation time only, so a trace always gives the same result.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from capstan_scheduler.domain.core import (
    CPU_LANE,
    Item,
    Node,
    Running,
    Snapshot,
    preemption_on,
    priority_for,
    queue_mode,
    schedule,
)
from capstan_scheduler.domain.core.model import TENTHS_PER_CARD

from .trace import NodeSpec, Trace, WorkloadSpec

_FINISH, _EVICT, _NODE, _ARRIVE, _TICK = 0, 1, 2, 3, 4  # order of events at one instant
_JOIN, _LEAVE = 0, 1


def capacity_seconds(nodes: Iterable[NodeSpec], lo: float, hi: float) -> tuple[float, float]:
    """(card-seconds, CPU-seconds) the nodes offer over [lo, hi]: each node from its ``join`` (or always) to
    its ``leave`` (or always). Nodes present throughout count ``cards x (hi - lo)``."""
    span = max(0.0, hi - lo)
    static_cards, static_cpu, card_s, cpu_s = 0, 0.0, 0.0, 0.0
    for n in nodes:
        cards = sum(n.cards.values())
        if n.join is None and n.leave is None:
            static_cards += cards
            static_cpu += n.cpu
            continue
        start = lo if n.join is None else max(lo, n.join)
        end = hi if n.leave is None else min(hi, n.leave)
        if end > start:
            card_s += cards * (end - start)
            cpu_s += n.cpu * (end - start)
    return static_cards * span + card_s, static_cpu * span + cpu_s


@dataclass(frozen=True)
class WaitStats:
    count: int
    mean_s: float
    p95_s: float


@dataclass
class SimResult:
    mode: int | None  # the queue-mode override, None when each group used its own policy
    preemption: bool | None
    workloads: int
    finished: int
    unfinished: int
    gpu_utilisation: float  # busy card-time / (cards x makespan)
    gpu_utilisation_arrivals: float  # the same over the arrival window only (first to last submit)
    cpu_utilisation: float  # busy CPU-time / (CPUs x makespan)
    fragmentation: float  # mean over decision points of fragment free cards / free cards (GPU lanes)
    wait_by_priority: dict[int, WaitStats]
    preemptions: int
    makespan_s: float
    cycles: int
    decisions: int  # items placed by the core
    wall_s: float
    starts: dict[str, list[float]] = field(default_factory=dict)  # workload id -> every start time
    finish_order: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, object]:
        """The comparable figures (no wall time): equal for the same trace and settings."""
        return {
            "mode": self.mode, "preemption": self.preemption, "workloads": self.workloads,
            "finished": self.finished, "unfinished": self.unfinished,
            "gpu_utilisation": round(self.gpu_utilisation, 9),
            "gpu_utilisation_arrivals": round(self.gpu_utilisation_arrivals, 9),
            "cpu_utilisation": round(self.cpu_utilisation, 9),
            "fragmentation": round(self.fragmentation, 9),
            "wait_by_priority": {p: (w.count, round(w.mean_s, 6), round(w.p95_s, 6))
                                 for p, w in sorted(self.wait_by_priority.items())},
            "preemptions": self.preemptions, "makespan_s": round(self.makespan_s, 6), "cycles": self.cycles,
            "decisions": self.decisions,
        }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    s = sorted(values)
    k = max(1, math.ceil(q / 100 * len(s)))
    return s[k - 1]


@dataclass
class _Group:
    id: str
    nodes: tuple[Node, ...]
    mode: int
    preempt: bool
    pending: dict[str, Item] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)


class Simulator:
    def __init__(self, trace: Trace, *, mode: int | None = None, preemption: bool | None = None,
                 grace_s: float = 0.0, cycle_interval_s: float = 0.0, keep_starts: bool = False) -> None:
        self.trace, self.mode, self.preemption = trace, mode, preemption
        self.grace_s, self.interval, self.keep_starts = grace_s, cycle_interval_s, keep_starts
        if mode is not None and mode not in (0, 1, 2):
            raise ValueError("mode must be 0, 1 or 2")

    def _item(self, w: WorkloadSpec, seq: int) -> Item:
        prio = w.priority if w.priority is not None else priority_for(self.trace.policy(w.resource_group), w.tags)
        return Item(w.id, w.kind, w.resource_group, prio, seq, w.request(), w.count,  # type: ignore[arg-type]
                    tuple(sorted(w.tags.items())))

    def run(self) -> SimResult:
        wall = time.perf_counter()
        tr = self.trace
        by_group: dict[str, list[Node]] = {}
        node_events: list[tuple[float, int, str]] = []
        late: dict[str, NodeSpec] = {}
        for ns in tr.nodes:
            if ns.join is None:
                by_group.setdefault(ns.resource_group, []).append(ns.to_node())
            else:
                node_events.append((ns.join, _JOIN, ns.id))
            if ns.leave is not None:
                node_events.append((ns.leave, _LEAVE, ns.id))
            if ns.join is not None or ns.leave is not None:
                late[ns.id] = ns
        gids = sorted(set(by_group) | {n.resource_group for n in tr.nodes} | set(tr.groups)
                      | {w.resource_group for w in tr.workloads})
        groups: dict[str, _Group] = {}
        for gid in gids:
            pol = tr.policy(gid)
            groups[gid] = _Group(gid, tuple(sorted(by_group.get(gid, []), key=lambda n: n.id)),
                               queue_mode(pol) if self.mode is None else self.mode,
                               preemption_on(pol) if self.preemption is None else self.preemption)

        order = sorted(range(len(tr.workloads)), key=lambda i: (tr.workloads[i].submit, i))
        items: dict[str, Item] = {}
        remaining: dict[str, float] = {}
        heap: list[tuple[float, int, int, str, int]] = []
        seq = 0
        for rank, i in enumerate(order):
            w = tr.workloads[i]
            items[w.id] = self._item(w, rank)
            remaining[w.id] = w.run_time
            heap.append((w.submit, _ARRIVE, seq, w.id, 0))
            seq += 1
        for at, change, nid in node_events:
            heap.append((at, _NODE, seq, nid, change))
            seq += 1
        heapq.heapify(heap)

        gen: dict[str, int] = {}  # bumps on every start, so stale finish/evict events are ignored
        started_at: dict[str, float] = {}
        queued_since: dict[str, float] = {}
        waited: dict[str, float] = {}
        starts: dict[str, list[float]] = {}
        finish_order: list[str] = []
        busy_card_s = busy_cpu_s = window_card_s = 0.0
        frag_sum, frag_points = 0.0, 0
        preemptions = cycles = decisions = 0
        t_first = min((w.submit for w in tr.workloads), default=0.0)
        t_last = t_first
        t_window = max((w.submit for w in tr.workloads), default=0.0)
        dirty: set[str] = set()
        tick_at: float | None = None

        def stop(iid: str, now: float) -> Running:
            nonlocal busy_card_s, busy_cpu_s, window_card_s
            it = items[iid]
            r = groups[it.resource_group].running.pop(iid)
            began = started_at.pop(iid)
            ran = now - began
            cards = it.instance_count * it.request.gpu_tenths / TENTHS_PER_CARD
            busy_card_s += ran * cards
            window_card_s += max(0.0, min(now, t_window) - max(began, t_first)) * cards
            busy_cpu_s += ran * it.instance_count * it.request.cpu
            remaining[iid] = max(0.0, remaining[iid] - ran)
            gen[iid] = gen.get(iid, 0) + 1
            dirty.add(it.resource_group)
            return r

        while heap:
            now = heap[0][0]
            tick = False
            while heap and heap[0][0] == now:
                _, kind, _, iid, g = heapq.heappop(heap)
                if kind == _TICK:
                    tick = True
                    continue
                if kind == _NODE:
                    ns = late[iid]
                    grp = groups[ns.resource_group]
                    if g == _JOIN:
                        grp.nodes = tuple(sorted((*grp.nodes, ns.to_node()), key=lambda n: n.id))
                    else:
                        grp.nodes = tuple(replace(n, state="Releasing") if n.id == iid else n for n in grp.nodes)
                    dirty.add(grp.id)
                    continue
                it = items[iid]
                grp = groups[it.resource_group]
                if kind == _ARRIVE:
                    grp.pending[iid] = it
                    queued_since[iid] = now
                    waited[iid] = 0.0
                    dirty.add(grp.id)
                elif g == gen.get(iid, 0) and iid in grp.running:
                    stop(iid, now)
                    if kind == _FINISH:
                        finish_order.append(iid)
                        t_last = max(t_last, now)
                    else:  # evicted: back to the queue, same Item (priority, submit order), remaining run time
                        preemptions += 1
                        grp.pending[iid] = it
                        queued_since[iid] = now
            if self.interval > 0 and not tick:
                if dirty and tick_at is None:
                    tick_at = math.floor(now / self.interval) * self.interval + self.interval
                    heapq.heappush(heap, (tick_at, _TICK, seq, "", 0))
                    seq += 1
                continue
            tick_at = None
            for gid in sorted(dirty):
                grp = groups[gid]
                if not grp.pending:
                    continue
                snap = Snapshot(grp.nodes, tuple(grp.running.values()), tuple(grp.pending.values()))
                d = schedule(snap, grp.mode, grp.preempt, int(now))
                cycles += 1
                for lane in d.lanes:
                    if lane.card_type == CPU_LANE:
                        continue
                    free = lane.whole_machine_free_cards + lane.fragment_free_cards
                    if free > 0:
                        frag_sum += lane.fragment_free_cards / free
                        frag_points += 1
                for iid, assignment in d.placements.items():
                    it = grp.pending.pop(iid)
                    grp.running[iid] = Running(it, assignment, int(now))
                    started_at[iid] = now
                    waited[iid] += now - queued_since.pop(iid)
                    if self.keep_starts:
                        starts.setdefault(iid, []).append(now)
                    decisions += 1
                    heapq.heappush(heap, (now + remaining[iid], _FINISH, seq, iid, gen.get(iid, 0)))
                    seq += 1
                for p in d.preemptions:
                    r = grp.running.get(p.victim_id)
                    if r is None or r.evicting:
                        continue
                    grp.running[p.victim_id] = replace(r, evicting=True)
                    heapq.heappush(heap, (now + self.grace_s, _EVICT, seq, p.victim_id, gen.get(p.victim_id, 0)))
                    seq += 1
            dirty.clear()

        finished = set(finish_order)
        per_prio: dict[int, list[float]] = {}
        for iid in finished:
            per_prio.setdefault(items[iid].priority, []).append(waited[iid])
        makespan = max(0.0, t_last - t_first)
        cap_card_s, cap_cpu_s = capacity_seconds(tr.nodes, t_first, t_last)
        window_cap_card_s, _ = capacity_seconds(tr.nodes, t_first, t_window)
        return SimResult(
            mode=self.mode, preemption=self.preemption, workloads=len(items), finished=len(finished),
            unfinished=len(items) - len(finished),
            gpu_utilisation=busy_card_s / cap_card_s if cap_card_s else 0.0,
            gpu_utilisation_arrivals=window_card_s / window_cap_card_s if window_cap_card_s else 0.0,
            cpu_utilisation=busy_cpu_s / cap_cpu_s if cap_cpu_s else 0.0,
            fragmentation=frag_sum / frag_points if frag_points else 0.0,
            wait_by_priority={p: WaitStats(len(v), sum(v) / len(v), percentile(v, 95))
                              for p, v in sorted(per_prio.items())},
            preemptions=preemptions, makespan_s=makespan, cycles=cycles, decisions=decisions,
            wall_s=time.perf_counter() - wall, starts=starts, finish_order=finish_order,
        )


def simulate(trace: Trace, **kwargs: object) -> SimResult:
    return Simulator(trace, **kwargs).run()  # type: ignore[arg-type]


def format_table(results: Mapping[str, SimResult]) -> str:
    """A plain-text table of the figures, one column per run."""
    names = list(results)
    prios = sorted({p for r in results.values() for p in r.wait_by_priority})
    rows: list[tuple[str, list[str]]] = [
        ("finished / workloads", [f"{r.finished}/{r.workloads}" for r in results.values()]),
        ("GPU utilisation", [f"{r.gpu_utilisation:.1%}" for r in results.values()]),
        ("GPU utilisation, arrival window", [f"{r.gpu_utilisation_arrivals:.1%}" for r in results.values()]),
        ("CPU utilisation", [f"{r.cpu_utilisation:.1%}" for r in results.values()]),
        ("fragmentation (frag free / free)", [f"{r.fragmentation:.1%}" for r in results.values()]),
        ("preemptions", [str(r.preemptions) for r in results.values()]),
        ("makespan (h)", [f"{r.makespan_s / 3600:.2f}" for r in results.values()]),
        ("cycles / placements", [f"{r.cycles}/{r.decisions}" for r in results.values()]),
        ("wall time (s)", [f"{r.wall_s:.1f}" for r in results.values()]),
    ]
    for p in prios:
        cells = []
        for r in results.values():
            w = r.wait_by_priority.get(p)
            cells.append(f"{w.mean_s / 60:.1f} / {w.p95_s / 60:.1f} (n={w.count})" if w else "-")
        rows.append((f"P{p} wait mean / p95 (min)", cells))
    return render_table(names, rows)


def render_table(names: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A plain-text table: one column per name, one row per (label, cells)."""
    width = max(len(k) for k, _ in rows)
    cols = [max(len(n), *(len(c[i]) for _, c in rows)) for i, n in enumerate(names)]
    out = [" | ".join([" " * width, *(n.rjust(w) for n, w in zip(names, cols, strict=True))])]
    out.append("-+-".join(["-" * width, *("-" * w for w in cols)]))
    for k, cells in rows:
        out.append(" | ".join([k.ljust(width), *(c.rjust(w) for c, w in zip(cells, cols, strict=True))]))
    return "\n".join(out)
