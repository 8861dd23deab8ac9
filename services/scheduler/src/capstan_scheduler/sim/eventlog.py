"""A recorded event log -> the simulator's trace, and the outcome the log recorded (docs/simulation.md).

Two steps, so that a log can be taken off a running Capstan once and replayed many times:

1. **Export** (``iter_event_log`` / ``export_event_log``, ``scripts/export_events.py``): the whole
   ``CAPSTAN_EVENTS`` stream as JSON Lines, one line per event, as stored:
   ``{"seq", "subject", "t", "type", "version", "data"}`` (``seq``: the commit's stream sequence; ``t``: the
   commit time, ms; the events of one commit share both and keep their order). Nothing is upcast or
   dropped, so an export from an older Capstan is upcast when it is read.
2. **Convert** (``read_event_log`` + ``from_event_log``): each line is decoded with ``capstan_core.events.decode``
   (the event store's own decoder: upcasters apply, unknown types are skipped) and folded into a ``Trace``
   plus a ``RecordedOutcome`` with the same figures the simulator reports, so a replay prints
   "recorded vs simulated".

What is measured (all times from the events' own ``at_ms``; the trace's origin is the first submit of a
workload that ran):

- **submit**: ``WorkloadSubmitted.at_ms`` (the scheduler's own contract, whoever appended it).
- **attempt**: from a ``WorkloadPlaced`` to the first of ``TrainingTaskRequeued`` (every instance of an
  evicted, lost or failed-and-restarting attempt has exited), ``WorkloadRequeued``, ``WorkloadInstancesLost``, or the end
  (``WorkloadWithdrawn``). A preempted attempt includes its grace period (the
  simulator's victim also keeps working until it leaves).
- **run_time**: the sum of the attempts (the simulator assumes an evicted task keeps its progress).
- **wait**: submit -> first placement, plus every attempt end -> next placement (the simulator's definition).
- still running at the end of the log: the attempt runs to the log's end (the latest ``at_ms`` in the log,
  or ``end_ms``); queued again at the end: its wait runs to the log's end. Both are kept and listed.
- left out: rejected (``WorkloadRejected`` before any placement), ended before any placement (stopped or
  failed while queued), still queued at the end without ever running.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import (
    CAPABILITY_TRAINING,
    NodeJoined,
    NodeStateChanged,
    ResourceGroupCreated,
    ResourceGroupUpdated,
    WorkloadInstancesLost,
    WorkloadPlaced,
    WorkloadPreemptionRequested,
    WorkloadRejected,
    WorkloadRequeued,
    WorkloadSubmitted,
    WorkloadWithdrawn,
    node_capabilities,
)
from capstan_core.contracts.training import TrainingTaskRequeued
from capstan_core.errors import InvalidArgument
from capstan_core.events import Event, UnknownEvent, decode
from capstan_core.streams import EVENTS_STREAM, EVENTS_SUBJECTS
from capstan_scheduler.domain.core import priority_for
from capstan_scheduler.domain.core.model import TENTHS_PER_CARD
from capstan_scheduler.domain.policy import validate_policy
from capstan_scheduler.snapshot import DEFAULT_SHAREABLE

from .engine import SimResult, WaitStats, capacity_seconds, percentile, render_table
from .trace import GroupSpec, NodeSpec, Trace, TraceError, WorkloadSpec, json_lines

EXPORT_FIELDS = ("seq", "subject", "t", "type", "version", "data")
Progress = Callable[[int, int, int], None]  # (commits read, commits in the stream, events written)

# ---------------------------------------------------------------------------------------------- export


def commit_lines(seq: int, subject: str, body: bytes) -> list[dict[str, Any]]:
    """The export lines of one stored commit (body ``{"t": ms, "events": [{"type", "version", "data"}]}``,
    see ``capstan_core.eventstore.encode_commit``), events as stored."""
    doc = json.loads(body)
    t = int(doc.get("t", 0))
    return [{"seq": seq, "subject": subject, "t": t, "type": raw["type"], "version": int(raw.get("version", 1)),
             "data": raw.get("data", {})} for raw in doc["events"]]


async def iter_event_log(js: JetStreamContext, *, stream: str = EVENTS_STREAM, subjects: str = EVENTS_SUBJECTS,
                         idle_timeout_s: float = 5.0, progress: Progress | None = None,
                         progress_every: int = 10_000) -> AsyncIterator[dict[str, Any]]:
    """Every event of ``stream`` up to its last sequence when the read began, in order (an ordered push
    consumer from the first message). Raises ``TimeoutError`` if nothing arrives for ``idle_timeout_s`` before
    that sequence (rather than returning a silently truncated log)."""
    info = await js.stream_info(stream)
    last, total = int(info.state.last_seq), int(info.state.messages)
    if not total:
        return
    sub = await js.subscribe(subjects, stream=stream, ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    commits = events = 0
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_timeout_s)
            except NatsTimeout:
                raise TimeoutError(f"{stream}: nothing delivered for {idle_timeout_s:g} s after {commits} of {total} "
                                   f"commits (last sequence {last}); the export is incomplete") from None
            seq = int(msg.metadata.sequence.stream)
            for line in commit_lines(seq, msg.subject, msg.data):
                events += 1
                yield line
            commits += 1
            if progress is not None and commits % progress_every == 0:
                progress(commits, total, events)
            if seq >= last:
                break
    finally:
        await sub.unsubscribe()
    if progress is not None:
        progress(commits, total, events)


async def export_event_log(js: JetStreamContext, out: TextIO, **kwargs: Any) -> int:
    """Write the event log as JSON Lines to ``out``; returns the number of events written."""
    n = 0
    async for line in iter_event_log(js, **kwargs):
        out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


# ------------------------------------------------------------------------------------------------ read


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    subject: str
    t_ms: int
    event: Event


def read_event_log(lines: Iterable[str], source: str = "<event log>") -> Iterator[LoggedEvent]:
    """Decode an export line by line; errors name the line. Events of unknown types are skipped."""
    for where, rec in json_lines(lines, source):
        if not isinstance(rec, dict) or any(k not in rec for k in ("seq", "type", "data")):
            raise TraceError(f"{where}: an exported event needs seq, type and data")
        try:
            ev = decode({"type": rec["type"], "version": rec.get("version", 1), "data": rec["data"]})
        except (ValidationError, ValueError, TypeError) as e:
            raise TraceError(f"{where}: cannot decode {rec['type']}: {e}") from None
        if isinstance(ev, UnknownEvent):
            continue
        yield LoggedEvent(int(rec["seq"]), str(rec.get("subject", "")), int(rec.get("t", 0)), ev)


def load_event_log(path: str | Path) -> list[LoggedEvent]:
    with open(path, encoding="utf-8") as f:
        return list(read_event_log(f, str(path)))


# --------------------------------------------------------------------------------------------- convert


@dataclass
class RecordedOutcome:
    """What the log says happened, in the simulator's terms (every time in seconds from the origin)."""

    workloads: int  # workloads in the converted trace (each ran at least once)
    finished: int  # of those, ended in the log
    unfinished: int
    gpu_utilisation: float
    gpu_utilisation_arrivals: float
    cpu_utilisation: float
    wait_by_priority: dict[int, WaitStats]  # every workload of the trace (priority under the trace's policy)
    preemptions: int  # WorkloadPreemptionRequested events
    makespan_s: float  # first submit -> last attempt end (the log's end if work is still running)
    starts: dict[str, list[float]] = field(default_factory=dict)  # workload id -> every placement time
    waits: dict[str, float] = field(default_factory=dict)
    evictions_s: list[float] = field(default_factory=list)  # preemption request -> attempt end, per eviction

    def metrics(self) -> dict[str, object]:
        return {
            "workloads": self.workloads, "finished": self.finished, "unfinished": self.unfinished,
            "gpu_utilisation": round(self.gpu_utilisation, 9),
            "gpu_utilisation_arrivals": round(self.gpu_utilisation_arrivals, 9),
            "cpu_utilisation": round(self.cpu_utilisation, 9),
            "wait_by_priority": {p: (w.count, round(w.mean_s, 6), round(w.p95_s, 6))
                                 for p, w in sorted(self.wait_by_priority.items())},
            "preemptions": self.preemptions, "makespan_s": round(self.makespan_s, 6),
        }


@dataclass
class Conversion:
    trace: Trace
    recorded: RecordedOutcome
    origin_ms: int  # the trace's time 0
    end_ms: int  # the log's end: still-running work is measured up to here
    left_out: dict[str, list[str]]  # reason -> workload ids not in the trace
    still_running: list[str]  # in the trace with the run time observed so far
    queued_again_at_end: list[str]  # ran, was evicted, and waited again when the log ended
    dropped_nodes: list[str]  # never Running, or stopped taking work before the first workload
    skipped_nodes: list[str]  # not trainer nodes (the scheduler places work on trainer nodes only)
    policy_changes_ignored: dict[str, int]  # group -> policy edits after the one the trace uses

    @property
    def recorded_grace_s(self) -> float:
        """The median time an evicted attempt took to leave (0 if none was evicted)."""
        return statistics.median(self.recorded.evictions_s) if self.recorded.evictions_s else 0.0


@dataclass
class _Life:
    id: str
    kind: str
    rg: str
    submit_ms: int
    seq: int
    res: ResourceSpec
    count: int
    tags: dict[str, str]
    state: str = "queued"  # queued | running | ended
    since_ms: int = 0  # queued or running since
    wait_ms: int = 0
    intervals: list[tuple[int, int]] = field(default_factory=list)
    placed_ms: list[int] = field(default_factory=list)
    rejected: bool = False
    ended: bool = False
    evict_asked_ms: int | None = None
    evictions_ms: list[int] = field(default_factory=list)

    def end_attempt(self, at: int) -> None:
        if self.state != "running":
            return
        self.intervals.append((self.since_ms, max(self.since_ms, at)))
        if self.evict_asked_ms is not None:
            self.evictions_ms.append(max(0, at - self.evict_asked_ms))
            self.evict_asked_ms = None
        self.state, self.since_ms = "queued", at


@dataclass
class _NodeLife:
    joined: NodeJoined
    state: str = "Deploying"
    first_running_ms: int | None = None
    left_ms: int | None = None  # start of the current stretch away from Running, after it ran


def _at(ev: Event, fallback: int) -> int:
    at = getattr(ev, "at_ms", None)
    return int(at) if isinstance(at, int) else fallback


def from_event_log(events: Iterable[LoggedEvent], *, shareable: frozenset[str] = DEFAULT_SHAREABLE,
                   end_ms: int | None = None, source: str = "event-log") -> Conversion:
    """Fold an exported event log into a trace and the recorded outcome (module docstring: what is measured).
    ``shareable``: card types a node splits when its ``NodeJoined`` does not say (the scheduler's setting)."""
    lives: dict[str, _Life] = {}
    nodes: dict[str, _NodeLife] = {}
    policies: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    preemptions = 0
    last_ms = 0
    for le in events:
        ev = le.event
        at = _at(ev, le.t_ms)
        last_ms = max(last_ms, at)
        if isinstance(ev, WorkloadSubmitted):
            if ev.workload_id not in lives:
                kind = "service" if ev.kind == "service" else "training"
                lives[ev.workload_id] = _Life(ev.workload_id, kind, ev.resource_group_id, at, le.seq, ev.resources,
                                              ev.instance_count, dict(ev.tags), since_ms=at)
        elif isinstance(ev, ResourceGroupCreated | ResourceGroupUpdated):
            policies.setdefault(ev.rg_id, []).append((at, dict(ev.policy)))
        elif isinstance(ev, NodeJoined):
            n = nodes.get(ev.node_id)
            if n is None:
                nodes[ev.node_id] = _NodeLife(ev)
            else:
                n.joined = ev
        elif isinstance(ev, NodeStateChanged):
            n = nodes.get(ev.node_id)
            if n is None:
                continue
            if ev.state == "Running":
                if n.first_running_ms is None:
                    n.first_running_ms = at
                n.left_ms = None
            elif n.state == "Running":
                n.left_ms = at
            n.state = ev.state
        elif isinstance(ev, WorkloadPreemptionRequested):
            preemptions += 1
            w = lives.get(ev.workload_id)
            if w is not None and w.state == "running" and w.evict_asked_ms is None:
                w.evict_asked_ms = at
        else:
            wid = _workload_id(ev)
            w = lives.get(wid) if wid else None
            if w is None or w.state == "ended":
                continue
            if isinstance(ev, WorkloadPlaced):
                if w.state == "queued":
                    w.wait_ms += max(0, at - w.since_ms)
                    w.state, w.since_ms = "running", at
                    w.placed_ms.append(at)
            elif isinstance(ev, TrainingTaskRequeued | WorkloadRequeued | WorkloadInstancesLost):
                w.end_attempt(at)
            elif isinstance(ev, WorkloadWithdrawn | WorkloadRejected):
                # a rejection after a placement: requeued into a group that was then deleted
                if w.state == "running":
                    w.end_attempt(at)
                if w.placed_ms:
                    w.wait_ms += max(0, at - w.since_ms)
                w.state, w.ended = "ended", True
                w.rejected = isinstance(ev, WorkloadRejected)

    end = int(end_ms) if end_ms is not None else last_ms
    left_out: dict[str, list[str]] = {"rejected": [], "ended_before_placement": [], "queued_at_end": []}
    still_running: list[str] = []
    queued_again: list[str] = []
    ran: list[_Life] = []
    for w in lives.values():
        if not w.placed_ms:
            reason = "rejected" if w.rejected else "ended_before_placement" if w.state == "ended" else "queued_at_end"
            left_out[reason].append(w.id)
            continue
        if w.state == "running":
            w.intervals.append((w.since_ms, max(w.since_ms, end)))
            still_running.append(w.id)
        elif w.state == "queued":
            w.wait_ms += max(0, end - w.since_ms)
            queued_again.append(w.id)
        ran.append(w)
    ran.sort(key=lambda w: (w.submit_ms, w.seq))
    origin = ran[0].submit_ms if ran else min((w.submit_ms for w in lives.values()), default=end)

    def rel(ms: int) -> float:
        return (ms - origin) / 1000

    # resource groups: the policy in force when the group's first workload (of the trace) was submitted
    first_submit: dict[str, int] = {}
    for w in ran:
        first_submit.setdefault(w.rg, w.submit_ms)
    groups: dict[str, GroupSpec] = {}
    ignored: dict[str, int] = {}
    for gid in sorted(policies):
        timeline = policies[gid]
        t0 = first_submit.get(gid)
        idx = len(timeline) - 1
        if t0 is not None:
            before = [i for i, (at, _) in enumerate(timeline) if at <= t0]
            idx = before[-1] if before else 0
        try:
            groups[gid] = GroupSpec(gid, validate_policy(timeline[idx][1]))
        except InvalidArgument as e:
            raise TraceError(f"{source}: resource group {gid}: {e}") from None
        if len(timeline) - 1 - idx:
            ignored[gid] = len(timeline) - 1 - idx

    # nodes: those that run training (the simulator places every workload on them), from the first time they were Running to the start of a final stretch away from it
    specs: list[NodeSpec] = []
    dropped: list[str] = []
    skipped: list[str] = []
    for nid in sorted(nodes):
        n = nodes[nid]
        j = n.joined
        if CAPABILITY_TRAINING not in node_capabilities(j.agent_kind, getattr(j, "capabilities", None)):
            skipped.append(nid)
            continue
        if n.first_running_ms is None or (n.left_ms is not None and n.left_ms <= max(origin, n.first_running_ms)):
            dropped.append(nid)
            continue
        declared = getattr(j, "shareable", None)
        share = set(declared) if declared is not None else shareable
        specs.append(NodeSpec(
            nid, j.resource_group_id, j.cpu, j.memory_gib, {t: int(c) for t, c in sorted(j.gpus.items()) if c},
            tuple(sorted(t for t in j.gpus if t in share and j.gpus[t])),
            join=rel(n.first_running_ms) if n.first_running_ms > origin else None,
            leave=rel(n.left_ms) if n.left_ms is not None else None,
        ))

    workloads = [
        WorkloadSpec(
            id=w.id, kind=w.kind, resource_group=w.rg, submit=rel(w.submit_ms),
            run_time=sum(b - a for a, b in w.intervals) / 1000, cpu=w.res.cpu, memory_gib=w.res.memory_gib,
            gpu_type=w.res.gpu_type if w.res.gpu else "", gpu=w.res.gpu, count=w.count, tags=dict(w.tags),
        )
        for w in ran
    ]
    meta: dict[str, Any] = {
        "source": source, "origin_ms": origin, "end_ms": end, "still_running": len(still_running),
        "queued_again_at_end": len(queued_again), **{f"left_out_{k}": len(v) for k, v in left_out.items()},
    }
    if ignored:
        meta["policy_changes_ignored"] = dict(ignored)
    trace = Trace(groups, specs, workloads, meta)
    recorded = _recorded(trace, ran, rel, preemptions, end)
    return Conversion(trace, recorded, origin, end, left_out, still_running, queued_again, dropped, skipped, ignored)


def _workload_id(ev: Event) -> str:
    for key in ("workload_id", "task_id", "replica_id"):
        v = getattr(ev, key, None)
        if isinstance(v, str):
            return v
    return ""


def _recorded(trace: Trace, ran: list[_Life], rel: Callable[[int], float], preemptions: int,
              end_ms: int) -> RecordedOutcome:
    t_window = max((rel(w.submit_ms) for w in ran), default=0.0)
    t_last = max((rel(b) for w in ran for _, b in w.intervals), default=0.0)
    busy_card_s = window_card_s = busy_cpu_s = 0.0
    per_prio: dict[int, list[float]] = {}
    for w in ran:
        cards = w.count * round(w.res.gpu * TENTHS_PER_CARD) / TENTHS_PER_CARD
        for a, b in w.intervals:
            s, e = rel(a), rel(b)
            busy_card_s += (e - s) * cards
            busy_cpu_s += (e - s) * w.count * w.res.cpu
            window_card_s += max(0.0, min(e, t_window) - max(s, 0.0)) * cards
        prio = priority_for(trace.policy(w.rg), w.tags)
        per_prio.setdefault(prio, []).append(w.wait_ms / 1000)
    cap_card_s, cap_cpu_s = capacity_seconds(trace.nodes, 0.0, t_last)
    window_cap_s, _ = capacity_seconds(trace.nodes, 0.0, t_window)
    finished = sum(1 for w in ran if w.ended)
    return RecordedOutcome(
        workloads=len(ran), finished=finished, unfinished=len(ran) - finished,
        gpu_utilisation=busy_card_s / cap_card_s if cap_card_s else 0.0,
        gpu_utilisation_arrivals=window_card_s / window_cap_s if window_cap_s else 0.0,
        cpu_utilisation=busy_cpu_s / cap_cpu_s if cap_cpu_s else 0.0,
        wait_by_priority={p: WaitStats(len(v), sum(v) / len(v), percentile(v, 95)) for p, v in sorted(per_prio.items())},
        preemptions=preemptions, makespan_s=t_last,
        starts={w.id: [rel(t) for t in w.placed_ms] for w in ran},
        waits={w.id: w.wait_ms / 1000 for w in ran},
        evictions_s=[ms / 1000 for w in ran for ms in w.evictions_ms],
    )


# ---------------------------------------------------------------------------------------------- report


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _ratio(sim: float, rec: float) -> str:
    return f"{sim / rec:.2f}" if rec else "-"


def format_comparison(recorded: RecordedOutcome, results: Mapping[str, SimResult]) -> str:
    """Recorded figures, each simulated run, and each run's ratio to the recorded figure (simulated / recorded)."""
    runs = list(results.items())
    names = ["recorded", *(k for k, _ in runs), *(f"{k} / recorded" for k, _ in runs)]
    prios = sorted(set(recorded.wait_by_priority) | {p for _, r in runs for p in r.wait_by_priority})

    def row(label: str, rec: float | None, sims: list[float], fmt: Callable[[float], str]) -> tuple[str, list[str]]:
        cells = ["-" if rec is None else fmt(rec), *(fmt(v) for v in sims)]
        cells += [_ratio(v, rec) if rec is not None else "-" for v in sims]
        return label, cells

    pct = "{:.1%}".format
    rows = [
        ("finished / workloads", [f"{recorded.finished}/{recorded.workloads}",
                                  *(f"{r.finished}/{r.workloads}" for _, r in runs), *("-" for _ in runs)]),
        row("GPU utilisation", recorded.gpu_utilisation, [r.gpu_utilisation for _, r in runs], pct),
        row("GPU utilisation, arrival window", recorded.gpu_utilisation_arrivals,
            [r.gpu_utilisation_arrivals for _, r in runs], pct),
        row("CPU utilisation", recorded.cpu_utilisation, [r.cpu_utilisation for _, r in runs], pct),
        row("preemptions", recorded.preemptions, [r.preemptions for _, r in runs], lambda v: f"{v:g}"),
        row("makespan", recorded.makespan_s, [r.makespan_s for _, r in runs], _dur),
    ]
    for p in prios:
        rec = recorded.wait_by_priority.get(p)
        cells = [f"{_dur(rec.mean_s)} / {_dur(rec.p95_s)} (n={rec.count})" if rec else "-"]
        for _, r in runs:
            w = r.wait_by_priority.get(p)
            cells.append(f"{_dur(w.mean_s)} / {_dur(w.p95_s)} (n={w.count})" if w else "-")
        for _, r in runs:
            w = r.wait_by_priority.get(p)
            cells.append(f"{_ratio(w.mean_s, rec.mean_s)} / {_ratio(w.p95_s, rec.p95_s)}" if w and rec else "-")
        rows.append((f"P{p} wait mean / p95", cells))
    return render_table(names, rows)
