"""Graceful preemption end to end: a high-priority task evicts a running low-priority one, which gets
SIGTERM and its grace period, goes back to the queue as a new attempt (not a failure, not a restart),
and resumes from its output directory once the high-priority task is done."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import pytest

import capstan_core.contracts.scheduling  # noqa: F401 - registers event types read below
from capstan_core.eventstore import EventStore
from capstan_core.streams import event_subject
from capstan_proto import common_pb2, trainer_pb2

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

CHECKPOINTING = (
    "n=$(cat /opt/ml/output/step 2>/dev/null || echo 0); echo \"resume from $n\"; "
    "trap 'echo checkpoint $n; echo $n > /opt/ml/output/step; exit 0' TERM; "
    "while [ $n -lt 25 ]; do n=$((n+1)); sleep 0.2; done; echo \"done at $n\""
)
POLICY = {
    "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": 0, "Preempted": 1},
    "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": "urgent"}], "ScheduleRule": {"Priority": 1}}],
}


@pytest.fixture
async def slice_(platform: Any) -> tuple[Any, Any, str, Any]:
    rg = await platform.group("shared", POLICY)
    agent = await platform.agent(rg, "only")
    return platform.t, agent, rg, platform.sched


async def test_low_priority_task_is_evicted_requeued_and_resumes(slice_: Any, platform: Any) -> None:
    t, agent, rg, sched = slice_
    res = common_pb2.Resources(cpu=2, memory_gib=1)
    low = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="low", resource_group_id=rg, command=CHECKPOINTING, resources=res, stop_grace_seconds=10))
    await platform.wait(low.id, "Running")
    await asyncio.sleep(1.0)  # some steps done
    high = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="high", resource_group_id=rg, command="echo urgent-done", resources=res, tags={"tier": "urgent"}))
    requeued = await platform.wait(low.id, "Queued", "Failed", "Succeeded")
    assert requeued.status == "Queued" and requeued.attempt == 1 and requeued.preemptions == 1
    assert (await platform.wait(high.id, "Succeeded", "Failed")).status == "Succeeded"
    done = await platform.wait(low.id, "Succeeded", "Failed", timeout=40)
    assert done.status == "Succeeded" and done.attempt == 1
    lines = [ln.line for ln in (await t.GetLogs(trainer_pb2.GetLogsRequest(task_id=low.id, instance_index=-1))).lines]
    checkpoints = [ln for ln in lines if ln.startswith("checkpoint ")]
    assert len(checkpoints) == 1 and int(checkpoints[0].split()[1]) > 0, lines
    assert f"resume from {checkpoints[0].split()[1]}" in lines and "resume from 0" in lines and "done at 25" in lines

    assert sched.ctx is not None
    recorded, _ = await EventStore(sched.ctx.js).load(event_subject("workload", low.id))
    assert [r.event.TYPE for r in recorded] == [
        "WorkloadQueued", "WorkloadPlaced", "WorkloadPreemptionRequested", "WorkloadRequeued", "WorkloadPlaced",
        "WorkloadReleased",
    ]
    train_events, _ = await EventStore(sched.ctx.js).load(event_subject("train", low.id))
    types = [r.event.TYPE for r in train_events]
    assert types.count("TrainingTaskPreempting") == 1 and types.count("TrainingTaskRequeued") == 1
    assert types[-2:] == ["TrainingTaskEnded", "WorkloadWithdrawn"]  # the scheduler's contract beside it
