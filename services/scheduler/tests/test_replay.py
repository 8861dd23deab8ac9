"""The same event log replayed gives the same decisions (issue #3, point 9), at service level.

Run A: a scheduler service with an injected clock and no background loop is driven step by step
through a random scenario (groups, nodes with whole and fractional cards, training tasks with
priorities and gangs, service replicas, preemption, a node lost for good, a release); the owners'
events (trainer, service owner) are appended as those services would. Its event log is then read
back and replayed into run B, a fresh scheduler on a fresh nats-server and database: every commit
that is not a decision of the scheduling cycle is appended as recorded, and wherever A's log holds
decisions, B runs one cycle at the same clock time. B must append exactly A's decisions, and end
with equal read models. Replaying the same log with preemption turned off must differ (so the
comparison can fail).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from capstan_core.clock import FixedClock
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import CAPABILITIES, ResourceGroupCreated, WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.contracts.training import TrainingTaskRequeued
from capstan_core.db import table_digest
from capstan_core.events import Event
from capstan_core.eventstore import EventStore, decode_commit
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM, event_subject
from capstan_core.testing import admin_store, start_secure_nats
from capstan_scheduler.app import SchedulerApp
from capstan_scheduler.reconcile import Scheduler
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_scheduler.tables import workloads

# the commits the scheduling cycle appends (one event each); everything else is an input
CYCLE_DECISIONS = {"WorkloadQueued", "WorkloadRejected", "WorkloadPlaced", "WorkloadPreemptionRequested",
                   "WorkloadRequeued", "WorkloadReleased"}
Commit = tuple[str, list[Event]]


def _manual(clock: FixedClock) -> Any:
    """The scheduler service with an injected clock and no background loop: the test runs the cycles."""
    return dataclasses.replace(SCHEDULER, build=lambda ctx: SchedulerApp(ctx, clock=clock), background=[])


async def _read_log(store: EventStore, first: int = 1) -> list[Commit]:
    js = store._js  # noqa: SLF001 - the test reads the raw stream, commit by commit
    out: list[Commit] = []
    for seq in range(first, await store.last_seq() + 1):
        msg = await js.get_msg(EVENTS_STREAM, seq)
        out.append((msg.subject, [r.event for r in decode_commit(seq, msg.subject, msg.data, msg.headers)]))
    return out


def _is_decision(commit: Commit) -> bool:
    subject, events = commit
    return subject.startswith("capstan.evt.workload.") and len(events) == 1 and events[0].TYPE in CYCLE_DECISIONS


def _key(commit: Commit) -> tuple[str, list[tuple[str, str]]]:
    subject, events = commit
    return subject, [(e.TYPE, e.model_dump_json()) for e in events]


async def _record(tmp: Path, nats_url: str, seed: int, secrets_dir: Path) -> tuple[list[Commit], str]:
    """Run A: a random scenario, driven step by step. Returns its event log and read-model digest."""
    rnd = random.Random(seed)
    clock = FixedClock(1_800_000_000_000)
    svc = Service(_manual(clock), ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp / "a", nats_url=nats_url))
    await svc.start()
    try:
        app: SchedulerApp = svc.app
        sched = Scheduler(app)
        store = app.ctx.store
        policy = {"Version": "1.0", "ResourceRule": {"DefaultPriority": 6, "DefaultQueue": rnd.choice([0, 1, 2]), "Preempted": 1},
                  "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "p", "Value": str(p)}],
                                 "ScheduleRule": {"Priority": p}} for p in range(10)]}
        rg = (await app.create_resource_group(name="pool", description="", tags={}, policy_json=json.dumps(policy),
                                              creator="ops", idempotency_key="pool"))["id"]
        nodes = [(await app.join_node(rg_id=rg, name=f"n{i}", agent_kind="trainer", cpu=16, memory_gib=64,
                                      gpus={"A100": 4} if i < 3 else {}, capabilities=list(CAPABILITIES)))["id"]
                 for i in range(4)]
        silent: set[str] = set()
        handled: set[tuple[str, int]] = set()
        n_tasks = 0

        async def owner(subject: str, event: Event) -> None:
            async with admin_store(nats_url, secrets_dir) as other:  # the trainer / inference owner's place
                _, last = await other.load(subject)
                await other.append(subject, [event], expected_seq=last)

        for step in range(40):
            clock.advance(rnd.choice([1_000, 5_000, 20_000]))
            for n in nodes:
                if n not in silent:
                    await app.heartbeat(n)
            for _ in range(rnd.choice([0, 1, 1, 2, 3]) if step not in (8, 20) else 3):
                n_tasks += 1
                gpu = rnd.choice([0, 0.3, 0.5, 1, 2, 4]) if step not in (8, 20) else 4
                res = ResourceSpec(cpu=rnd.choice([1, 2, 4]), memory_gib=2, gpu_type="A100" if gpu else "", gpu=gpu)
                tags = {"p": str(rnd.randrange(10))} if rnd.random() < 0.7 else {}
                if step in (8, 20):
                    tags = {"p": "0"}  # urgent bursts: they must preempt
                if rnd.random() < 0.2 and step not in (8, 20):
                    rid = f"svc-{n_tasks}"
                    await owner(event_subject("service", rid), WorkloadSubmitted(
                        workload_id=rid, kind="service", capability="serving", resource_group_id=rg, resources=res,
                        tags=tags, at_ms=clock.now_ms()))
                else:
                    tid = f"train-{n_tasks}"
                    await owner(event_subject("train", tid), WorkloadSubmitted(
                        workload_id=tid, kind="training", capability="training", resource_group_id=rg, resources=res,
                        instance_count=rnd.choice([1, 1, 1, 2, 3]) if gpu >= 1 else 1, tags=tags, at_ms=clock.now_ms()))
            assert await app.ctx.runner.wait_for(await store.last_seq(), timeout=60)  # a loaded machine must not change the decisions
            with app.ctx.engine.connect() as conn:
                rows = conn.execute(select(workloads)).mappings().all()
            for w in rows:  # the owners react: evicted work goes back, some running work ends
                if w["ended"]:
                    continue
                if w["status"] == "evicting" and w["kind"] == "training" and (w["id"], w["subject_seq"]) not in handled:
                    handled.add((w["id"], w["subject_seq"]))
                    await owner(event_subject("train", w["id"]), TrainingTaskRequeued(
                        task_id=w["id"], attempt=w["subject_seq"], reason="evicted", at_ms=clock.now_ms()))
                elif w["status"] == "placed" and rnd.random() < 0.25:
                    owner_kind = "service" if w["kind"] == "service" else "train"
                    await owner(event_subject(owner_kind, w["id"]), WorkloadWithdrawn(
                        workload_id=w["id"], reason="ended", at_ms=clock.now_ms()))
            if step == 12:
                silent.add(nodes[0])  # falls silent: Abnormal after 15 s, lost for good after 300 s
            if step == 25:
                clock.advance(400_000)
            if step == 30:
                await app.release_nodes([nodes[1]])
            assert await app.ctx.runner.wait_for(await store.last_seq(), timeout=60)
            await sched.step()
        assert await app.ctx.runner.wait_for(await store.last_seq(), timeout=60)
        return await _read_log(store), table_digest(app.ctx.engine)
    finally:
        await svc.stop()


async def _replay(
    tmp: Path, log: list[Commit], secrets_dir: Path, edit: Callable[[Event], Event] = lambda e: e
) -> tuple[list[Commit], list[Commit], str]:
    """Run B: replay ``log`` into a fresh scheduler. Returns (A's decisions, B's decisions, B's read-model digest)."""
    server = start_secure_nats(tmp / "nats-b", secrets_dir)
    clock = FixedClock(0)
    svc = Service(_manual(clock), ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp / "b", nats_url=server.url))
    await svc.start()
    try:
        app: SchedulerApp = svc.app
        sched = Scheduler(app)
        store = app.ctx.store
        recorded: list[Commit] = []
        replayed: list[Commit] = []
        i = 0
        while i < len(log):
            if not _is_decision(log[i]):
                subject, events = log[i]
                async with admin_store(server.url, secrets_dir) as inputs:  # appended as their owners did
                    await inputs.append(subject, [edit(e) for e in events], expected_seq=None)
                i += 1
                continue
            # one cycle of A: the run of decisions made at the same clock time
            at = log[i][1][0].at_ms  # type: ignore[attr-defined]
            while i < len(log) and _is_decision(log[i]) and log[i][1][0].at_ms == at:  # type: ignore[attr-defined]
                recorded.append(log[i])
                i += 1
            before = await store.last_seq()
            assert await app.ctx.runner.wait_for(before, timeout=60)
            clock.t = at
            await sched.cycle()
            replayed.extend(await _read_log(store, before + 1))
        assert await app.ctx.runner.wait_for(await store.last_seq(), timeout=60)
        return recorded, replayed, table_digest(app.ctx.engine)
    finally:
        await svc.stop()
        server.stop()


@pytest.mark.parametrize("seed", [1, 3])  # scenarios that reach preemption, lost nodes, services and releases
async def test_replaying_the_recorded_log_gives_the_same_decisions(tmp_path: Path, nats_server: Any, secrets_dir: Path, seed: int) -> None:
    log, digest = await _record(tmp_path, nats_server.url, seed, secrets_dir)
    kinds = {e.TYPE for _, events in log for e in events}
    # the scenario exercised what matters: placements, preemption, lost nodes, services, releases
    assert {"WorkloadPlaced", "WorkloadPreemptionRequested", "WorkloadInstancesLost", "WorkloadSubmitted",
            "WorkloadReleased"} <= kinds, kinds
    assert any(getattr(e, "kind", "") == "service" for _, events in log for e in events if e.TYPE == "WorkloadSubmitted")
    recorded, replayed, replayed_digest = await _replay(tmp_path / "r1", log, secrets_dir)
    assert len(recorded) > 30
    assert [_key(c) for c in replayed] == [_key(c) for c in recorded]
    assert replayed_digest == digest  # and the read models end equal, row for row

    def no_preemption(e: Event) -> Event:
        if isinstance(e, ResourceGroupCreated):
            rule = {**e.policy["ResourceRule"], "Preempted": 0}
            return e.model_copy(update={"policy": {**e.policy, "ResourceRule": rule}})
        return e

    recorded, replayed, _ = await _replay(tmp_path / "r2", log, secrets_dir, no_preemption)
    assert [_key(c) for c in replayed] != [_key(c) for c in recorded]
    assert not any(e.TYPE == "WorkloadPreemptionRequested" for _, events in replayed for e in events)
