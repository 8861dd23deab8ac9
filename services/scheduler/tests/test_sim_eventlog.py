"""Replaying a recorded event log (issue #3, point 10's what-if): export from a real JetStream event log,
conversion into a trace with exact submit/run times, the recorded outcome, and a what-if that changes it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import (
    NODE,
    RSG,
    WORKLOAD,
    InstancePlacement,
    NodeJoined,
    NodeStateChanged,
    ResourceGroupCreated,
    ResourceGroupUpdated,
    WorkloadPlaced,
    WorkloadPreemptionRequested,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadReleased,
    WorkloadRequeued,
    WorkloadSubmitted,
    WorkloadWithdrawn,
)
from capstan_core.contracts.serving import AGGREGATE as SERVICE
from capstan_core.contracts.training import AGGREGATE as TRAIN
from capstan_core.contracts.training import (
    TrainingInstanceStarted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
)
from capstan_core.events import Event
from capstan_core.eventstore import EventStore
from capstan_core.streams import ensure_streams, event_subject
from capstan_core.testing import NatsServer
from capstan_scheduler.domain.policy import validate_policy
from capstan_scheduler.sim import GroupSpec, NodeSpec, Trace, TraceError, WorkloadSpec, dumps, loads, simulate
from capstan_scheduler.sim.eventlog import (
    export_event_log,
    format_comparison,
    from_event_log,
    iter_event_log,
    read_event_log,
)

ROOT = Path(__file__).resolve().parents[3]
T0 = 1_767_000_000_000  # the first submit, epoch ms


def _policy(preempted: int, queue: int = 0) -> dict[str, Any]:
    rule = [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": v}], "ScheduleRule": {"Priority": p}}
            for v, p in (("high", 0), ("low", 9))]
    return {"Version": "1.0", "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": queue, "Preempted": preempted},
            "TaskRules": rule}


POLICY = _policy(preempted=1)
NO_PREEMPTION = _policy(preempted=0)


def ms(s: float) -> int:
    return T0 + round(s * 1000)


def _task(tid: str, at: float, gpu: float, *, cpu: float = 8, mem: float = 32, count: int = 1,
          tags: dict[str, str] | None = None) -> TrainingTaskSubmitted:
    return TrainingTaskSubmitted(
        task_id=tid, name=tid, resource_group_id="rg", command="python train.py", hyperparameters={},
        resources=ResourceSpec(cpu=cpu, memory_gib=mem, gpu_type="A100" if gpu else "", gpu=gpu),
        instance_count=count, tags=tags or {}, creator="alice", stop_grace_seconds=30, at_ms=ms(at),
    )


def _sub(tid: str, at: float, gpu: float, **kw: Any) -> list[Event]:
    """A submitted task as the trainer appends it: its own event and the scheduler's workload contract."""
    t = _task(tid, at, gpu, **kw)
    return [t, WorkloadSubmitted(workload_id=tid, kind="training", capability="training", resource_group_id="rg",
                                 resources=t.resources, instance_count=t.instance_count, tags=t.tags, at_ms=t.at_ms)]


def _ended(tid: str, status: str, at: float) -> list[Event]:
    return [TrainingTaskEnded(task_id=tid, status=status, exit_code=0 if status == "Succeeded" else None, at_ms=ms(at)),
            WorkloadWithdrawn(workload_id=tid, reason=status, at_ms=ms(at))]


def _placed(wid: str, at: float, gpu: float, kind: str = "training", cpu: float = 8, mem: float = 32,
            count: int = 1) -> WorkloadPlaced:
    return WorkloadPlaced(
        workload_id=wid, kind=kind, resources=ResourceSpec(cpu=cpu, memory_gib=mem, gpu_type="A100" if gpu else "",
                                                           gpu=gpu),
        placements=[InstancePlacement(index=i, node_id="n-0") for i in range(count)], at_ms=ms(at),
    )


def _join(nid: str, at: float, kind: str, cpu: float, mem: float, gpus: dict[str, int]) -> list[Event]:
    return [NodeJoined(node_id=nid, resource_group_id="rg", name=nid, agent_kind=kind, cpu=cpu, memory_gib=mem,
                       gpus=gpus, at_ms=ms(at)),
            NodeStateChanged(node_id=nid, state="Running", reason="agent joined", at_ms=ms(at))]


def _state(nid: str, at: float, state: str) -> list[Event]:
    return [NodeStateChanged(node_id=nid, state=state, at_ms=ms(at))]


def _w(wid: str) -> str:
    return event_subject(WORKLOAD, wid)


def _t(tid: str) -> str:
    return event_subject(TRAIN, tid)


# The recorded run (seconds from the first submit). One node n-0 with 4 A100; policy: P5 by default, tier high
# -> P0, tier low -> P9, strict FIFO, preemption on.
#   a (P9, 4 cards) runs 1..33, is preempted for c (asked at 31, gone at 33), runs again 96..164: 100 s of work
#   s1 (service, CPU only) runs 11..51; c (P0, 4 cards) runs 35..95; f (2 x 0.5 card) runs from 166 to the end
#   e is rejected, d is stopped while queued, g is still queued at the end; the log ends at 200.
# n-1 (2 A100) joins at 150 and is released at 180; n-2 is released before any work; n-3 is an inference node.
SCENARIO: list[tuple[str, list[Event]]] = [
    (event_subject(RSG, "rg"), [ResourceGroupCreated(rg_id="rg", name="rg", tags={}, policy=NO_PREEMPTION,
                                                     creator="admin", at_ms=ms(-20))]),
    (event_subject(RSG, "rg"), [ResourceGroupUpdated(rg_id="rg", name="rg", description="", tags={}, policy=POLICY,
                                                     at_ms=ms(-15))]),
    (event_subject(NODE, "n-0"), _join("n-0", -10, "trainer", 32, 256, {"A100": 4})),
    (event_subject(NODE, "n-2"), _join("n-2", -10, "trainer", 8, 64, {})),
    (event_subject(NODE, "n-3"), _join("n-3", -10, "inference", 8, 64, {"A100": 1})),
    (event_subject(NODE, "n-2"), _state("n-2", -5, "Releasing")),
    (event_subject(NODE, "n-2"), _state("n-2", -4, "Released")),
    (_t("a"), _sub("a", 0, 4, tags={"tier": "low"})),
    (_w("a"), [WorkloadQueued(workload_id="a", kind="training", resource_group_id="rg", at_ms=ms(0.5))]),
    (_w("a"), [_placed("a", 1, 4)]),
    (_t("a"), [TrainingInstanceStarted(task_id="a", index=0, node_id="n-0", at_ms=ms(1.5))]),
    (_t("e"), _sub("e", 2, 16)),
    (_w("e"), [WorkloadRejected(workload_id="e", reason="no node has 16 A100", at_ms=ms(2.5))]),
    (event_subject(SERVICE, "svc"), [WorkloadSubmitted(
        workload_id="s1", kind="service", capability="serving", resource_group_id="rg",
        resources=ResourceSpec(cpu=2, memory_gib=4), tags={}, at_ms=ms(10))]),
    (_w("s1"), [WorkloadQueued(workload_id="s1", kind="service", resource_group_id="rg", at_ms=ms(10.5))]),
    (_w("s1"), [_placed("s1", 11, 0, kind="service", cpu=2, mem=4)]),
    (_t("c"), _sub("c", 30, 4, tags={"tier": "high"})),
    (_w("c"), [WorkloadQueued(workload_id="c", kind="training", resource_group_id="rg", at_ms=ms(30.5))]),
    (_w("a"), [WorkloadPreemptionRequested(workload_id="a", preemptor_id="c", at_ms=ms(31))]),
    (_t("a"), [TrainingTaskPreempting(task_id="a", attempt=0, preemptor_id="c", at_ms=ms(31.2))]),
    (_t("a"), [TrainingTaskRequeued(task_id="a", attempt=1, reason="preempted by c", at_ms=ms(33))]),
    (_w("a"), [WorkloadRequeued(workload_id="a", reason="preempted", at_ms=ms(34))]),
    (_w("c"), [_placed("c", 35, 4)]),
    (_t("d"), _sub("d", 40, 2)),
    (_w("d"), [WorkloadQueued(workload_id="d", kind="training", resource_group_id="rg", at_ms=ms(40.5))]),
    (_t("d"), [TrainingTaskStopRequested(task_id="d", by="alice", at_ms=ms(44))]),
    (_t("d"), _ended("d", "Stopped", 45)),
    (event_subject(SERVICE, "svc"), [WorkloadWithdrawn(workload_id="s1", at_ms=ms(51))]),
    (_w("s1"), [WorkloadReleased(workload_id="s1", at_ms=ms(52))]),
    (_t("c"), _ended("c", "Succeeded", 95)),
    (_w("c"), [WorkloadReleased(workload_id="c", at_ms=ms(95.5))]),
    (_w("a"), [_placed("a", 96, 4)]),
    (event_subject(NODE, "n-1"), _join("n-1", 150, "trainer", 16, 128, {"A100": 2})),
    (_t("a"), _ended("a", "Succeeded", 164)),
    (_w("a"), [WorkloadReleased(workload_id="a", at_ms=ms(164.5))]),
    (_t("f"), _sub("f", 165, 0.5, cpu=1, mem=2, count=2, tags={"team": "x"})),
    (_w("f"), [WorkloadQueued(workload_id="f", kind="training", resource_group_id="rg", at_ms=ms(165.5))]),
    (_w("f"), [_placed("f", 166, 0.5, cpu=1, mem=2, count=2)]),
    (_t("g"), _sub("g", 170, 1)),
    (_w("g"), [WorkloadQueued(workload_id="g", kind="training", resource_group_id="rg", at_ms=ms(170.5))]),
    (event_subject(NODE, "n-1"), _state("n-1", 180, "Releasing")),
    (event_subject(NODE, "n-1"), _state("n-1", 181, "Released")),
    (event_subject(RSG, "rg"), [ResourceGroupUpdated(rg_id="rg", name="rg", description="", tags={},
                                                     policy=_policy(preempted=0, queue=2), at_ms=ms(200))]),
]

EXPECTED_WORKLOADS = [
    WorkloadSpec("a", "training", "rg", 0.0, 100.0, 8, 32, "A100", 4, 1, None, {"tier": "low"}),
    WorkloadSpec("s1", "service", "rg", 10.0, 40.0, 2, 4, "", 0, 1, None, {}),
    WorkloadSpec("c", "training", "rg", 30.0, 60.0, 8, 32, "A100", 4, 1, None, {"tier": "high"}),
    WorkloadSpec("f", "training", "rg", 165.0, 34.0, 1, 2, "A100", 0.5, 2, None, {"team": "x"}),
]


async def _record(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    store = EventStore(js)
    for subject, events in SCENARIO:
        await store.append(subject, events, expected_seq=None)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_export_writes_every_event_as_stored(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    assert [x async for x in iter_event_log(js)] == []  # an empty log exports nothing
    await _record(nc)
    out = io.StringIO()
    calls: list[tuple[int, int, int]] = []
    n = await export_event_log(js, out, progress=lambda c, t, e: calls.append((c, t, e)), progress_every=10)
    lines = _lines(out.getvalue())
    flat = [(subject, ev) for subject, events in SCENARIO for ev in events]
    assert n == len(lines) == len(flat)
    assert [list(line) for line in lines] == [["seq", "subject", "t", "type", "version", "data"]] * n
    # one commit per SCENARIO entry, sequences 1..N; the events of one commit share its sequence and time
    seqs = [seq for seq, (_, events) in enumerate(SCENARIO, 1) for _ in events]
    assert [line["seq"] for line in lines] == seqs
    for line, (subject, ev) in zip(lines, flat, strict=True):
        assert (line["subject"], line["type"], line["version"]) == (subject, ev.TYPE, ev.VERSION)
        assert line["data"] == ev.model_dump(mode="json")
        assert isinstance(line["t"], int) and line["t"] > 0
    assert lines[2]["t"] == lines[3]["t"]  # NodeJoined + NodeStateChanged: one commit
    assert calls[-1] == (len(SCENARIO), len(SCENARIO), n)
    assert [c for c, _, _ in calls[:-1]] == list(range(10, len(SCENARIO) + 1, 10))


async def test_conversion_is_exact(nc: Client) -> None:
    await _record(nc)
    out = io.StringIO()
    await export_event_log(nc.jetstream(), out)
    conv = from_event_log(read_event_log(out.getvalue().splitlines()))
    tr = conv.trace
    assert conv.origin_ms == T0 and conv.end_ms == ms(200)
    assert tr.workloads == EXPECTED_WORKLOADS
    assert tr.groups == {"rg": GroupSpec("rg", validate_policy(POLICY))}  # the policy when "a" was submitted
    assert conv.policy_changes_ignored == {"rg": 1}
    assert tr.nodes == [NodeSpec("n-0", "rg", 32, 256, {"A100": 4}, ("A100",)),
                        NodeSpec("n-1", "rg", 16, 128, {"A100": 2}, ("A100",), join=150.0, leave=180.0)]
    assert conv.dropped_nodes == ["n-2"] and conv.skipped_nodes == ["n-3"]
    assert conv.left_out == {"rejected": ["e"], "ended_before_placement": ["d"], "queued_at_end": ["g"]}
    assert conv.still_running == ["f"] and conv.queued_again_at_end == []
    assert conv.recorded_grace_s == 2.0

    rec = conv.recorded
    assert rec.starts == {"a": [1.0, 96.0], "s1": [11.0], "c": [35.0], "f": [166.0]}
    assert rec.waits == {"a": 64.0, "s1": 1.0, "c": 5.0, "f": 1.0}
    assert {p: (w.count, w.mean_s, w.p95_s) for p, w in rec.wait_by_priority.items()} == {
        0: (1, 5.0, 5.0), 5: (2, 1.0, 1.0), 9: (1, 64.0, 64.0)}
    assert (rec.workloads, rec.finished, rec.unfinished, rec.preemptions) == (4, 3, 1, 1)
    assert rec.makespan_s == 200.0
    # card-seconds 4*100 + 4*60 + 2*0.5*34 on n-0 (4 cards x 200 s) + n-1 (2 cards x 30 s)
    assert rec.gpu_utilisation == pytest.approx(674 / 860)
    assert rec.gpu_utilisation_arrivals == pytest.approx(640 / 690)  # up to the last submit (165)
    assert rec.cpu_utilisation == pytest.approx((8 * 100 + 8 * 60 + 2 * 40 + 2 * 34) / (32 * 200 + 16 * 30))

    # the converted trace is a valid trace file (join/leave included) and reads back the same
    assert loads(dumps(tr)) == tr
    # a later log end counts still-running work up to it
    later = from_event_log(read_event_log(out.getvalue().splitlines()), end_ms=ms(266))
    assert [w.run_time for w in later.trace.workloads if w.id == "f"] == [100.0]


async def test_what_if_preemption_on_vs_off(nc: Client) -> None:
    await _record(nc)
    out = io.StringIO()
    await export_event_log(nc.jetstream(), out)
    conv = from_event_log(read_event_log(out.getvalue().splitlines()))
    grace = conv.recorded_grace_s
    replay = simulate(conv.trace, grace_s=grace, keep_starts=True)
    off = simulate(conv.trace.with_policy(NO_PREEMPTION), grace_s=grace, keep_starts=True)
    # recorded policy (preemption on): c evicts a at 30, a leaves at 32 with 68 s left, c runs 32..92
    assert replay.preemptions == 1 and replay.starts["c"] == [32.0] and replay.starts["a"] == [0.0, 92.0]
    assert replay.wait_by_priority[0].mean_s == 2.0 and replay.wait_by_priority[9].mean_s == 60.0
    # preemption off: c waits for a to finish its 100 s
    assert off.preemptions == 0 and off.starts["c"] == [100.0] and off.starts["a"] == [0.0]
    assert off.wait_by_priority[0].mean_s == 70.0 and off.wait_by_priority[9].mean_s == 0.0
    assert replay.finished == off.finished == 4
    table = format_comparison(conv.recorded, {"replay": replay, "what-if": off})
    p0 = next(line for line in table.splitlines() if line.startswith("P0 wait"))
    assert [c.strip() for c in p0.split(" | ")[1:]] == [
        "5.0 s / 5.0 s (n=1)", "2.0 s / 2.0 s (n=1)", "70.0 s / 70.0 s (n=1)", "0.40 / 0.40", "14.00 / 14.00"]


async def test_scripts_export_and_replay(nats_server: NatsServer, nc: Client, tmp_path: Path, secrets_dir: Path) -> None:
    await _record(nc)
    events = tmp_path / "events.jsonl"
    exp = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_events.py"), "--nats", nats_server.url,
                          "--secrets-dir", str(secrets_dir), "--out", str(events)],
                         capture_output=True, text=True, timeout=120)
    assert exp.returncode == 0, exp.stderr
    assert f"export: {sum(len(e) for _, e in SCENARIO)} events" in exp.stderr
    # --data-dir: the NATS port from run/ports.json, as `capstan up` writes it
    data_dir = tmp_path / "platform"
    (data_dir / "run").mkdir(parents=True)
    port = int(nats_server.url.rsplit(":", 1)[1])
    (data_dir / "run" / "ports.json").write_text(json.dumps({"nats": port, "http": 1}))
    (data_dir / "secrets").symlink_to(secrets_dir)
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_events.py"), "--data-dir", str(data_dir),
                            "--quiet"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout == events.read_text()

    figures = tmp_path / "figures.json"
    sim = subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"), "--event-log", str(events),
                          "--policy", json.dumps(NO_PREEMPTION), "--cycle-interval", "0", "--json", str(figures)],
                         capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr
    assert "grace 2 s" in sim.stdout  # the recorded eviction time
    assert "what-if / recorded" in sim.stdout
    got = json.loads(figures.read_text())
    assert list(got) == ["recorded", "replay", "what-if"]
    assert [got[k]["wait_by_priority"]["0"] for k in got] == [[1, 5.0, 5.0], [1, 2.0, 2.0], [1, 70.0, 70.0]]
    assert [got[k]["preemptions"] for k in got] == [1, 1, 0]


def test_bad_export_lines_name_the_line() -> None:
    good = json.dumps({"seq": 1, "subject": "capstan.evt.x.y", "t": 1, "type": "SomethingNew", "version": 1,
                       "data": {"x": 1}})
    assert list(read_event_log([good])) == []  # unknown event types are skipped
    with pytest.raises(TraceError, match="<event log>:2: not JSON"):
        list(read_event_log([good, "{"]))
    bad = json.dumps({"seq": 2, "type": "WorkloadRequeued", "version": 1, "data": {"workload_id": "a"}})
    with pytest.raises(TraceError, match="<event log>:3: cannot decode WorkloadRequeued"):
        list(read_event_log([good, "", bad]))


def test_nodes_joining_and_leaving_in_the_simulator() -> None:
    work = [WorkloadSpec("w1", "training", "rg", 0, 100, 1, 1, "A100", 2),
            WorkloadSpec("w2", "training", "rg", 20, 10, 1, 1, "A100", 2)]
    late = Trace(nodes=[NodeSpec("n-0", "rg", 8, 64, {"A100": 2}, join=50.0)], workloads=list(work))
    r = simulate(late, keep_starts=True)
    assert r.starts == {"w1": [50.0], "w2": [150.0]}
    # over the makespan 0..160 the node offered 2 cards for 110 s
    assert r.gpu_utilisation == pytest.approx((2 * 100 + 2 * 10) / (2 * 110))
    # n-1 takes no work from 0 (node changes come before arrivals at one instant): w2 waits for n-0
    leaving = Trace(nodes=[NodeSpec("n-0", "rg", 8, 64, {"A100": 2}),
                           NodeSpec("n-1", "rg", 8, 64, {"A100": 2}, leave=0.0)], workloads=list(work))
    r = simulate(leaving, keep_starts=True)
    assert r.starts == {"w1": [0.0], "w2": [100.0]}
    assert r.gpu_utilisation == pytest.approx(220 / (2 * 110))
    # with n-1 taking work, w2 starts at once
    assert simulate(Trace(nodes=[*leaving.nodes[:1], NodeSpec("n-1", "rg", 8, 64, {"A100": 2})],
                          workloads=list(work)), keep_starts=True).starts["w2"] == [20.0]
    with pytest.raises(TraceError, match="leave must be after join"):
        loads('{"type": "node", "id": "n", "cpu": 1, "memory_gib": 1, "join": 5, "leave": 5}')
