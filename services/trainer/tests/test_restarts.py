"""Auto-restart end to end (SPEC 3.1): scheduler + trainer services and a real agent running instances
under bubblewrap, over a real nats-server. A task that exits abnormally while it runs starts again as a
new attempt while its budget (max_restarts) lasts, then fails; evictions never count against it."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

import capstan_core.contracts.scheduling  # noqa: F401 - registers event types read below
from capstan_core.eventstore import EventStore
from capstan_core.service import Service
from capstan_core.streams import event_subject
from capstan_proto import common_pb2, trainer_pb2
from capstan_trainer.agent.agent import TrainerAgent

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

POLICY = {
    "ResourceRule": {"DefaultPriority": 5, "DefaultQueue": 0, "Preempted": 1},
    "TaskRules": [{"AttrRules": [{"ValueType": "Tag", "Key": "tier", "Value": "urgent"}], "ScheduleRule": {"Priority": 1}}],
}


@dataclass
class Env:
    t: Any
    agent: TrainerAgent
    rg: str
    sched: Service
    platform: Any

    async def submit(self, command: str, *, cpu: float = 1, **kw: Any) -> trainer_pb2.TrainingTask:
        return await self.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
            name=kw.pop("name", "task"), resource_group_id=self.rg, command=command,
            resources=common_pb2.Resources(cpu=cpu, memory_gib=1), **kw))

    async def events(self, task_id: str) -> list[Any]:
        assert self.sched.ctx is not None
        recorded, _ = await EventStore(self.sched.ctx.js).load(event_subject("train", task_id))
        return [r.event for r in recorded]


@pytest.fixture
async def env(platform: Any) -> Env:
    rg = await platform.group("shared", POLICY)
    agent = await platform.agent(rg, "only", output_sync_s=0.5)
    return Env(platform.t, agent, rg, platform.sched, platform)


def _types(events: list[Any]) -> list[str]:
    return [e.TYPE for e in events]


async def test_a_failed_first_attempt_restarts_and_succeeds(env: Env) -> None:
    # The marker file survives into the next attempt through the task's output directory.
    task = await env.submit(
        'if [ -f /opt/ml/output/tried ]; then echo "second try"; exit 0; fi; '
        'touch /opt/ml/output/tried; echo "first try"; exit 1',
        max_restarts=1,
    )
    assert task.max_restarts == 1 and task.restarts_used == 0
    done = await env.platform.wait(task.id, "Succeeded", "Failed")
    assert done.status == "Succeeded", done.failure_reason
    assert (done.attempt, done.restarts, done.restarts_used, done.max_restarts, done.preemptions) == (1, 1, 1, 1, 0)
    lines = await env.platform.lines(task.id)
    assert lines.count("first try") == 1 and lines.count("second try") == 1
    events = await env.events(task.id)
    restart = next(e for e in events if e.TYPE == "TrainingTaskRestarting")
    assert (restart.attempt, restart.index, restart.exit_code, restart.restart) == (0, 0, 1, 1)
    requeues = [e for e in events if e.TYPE == "TrainingTaskRequeued"]
    assert [(e.attempt, e.cause) for e in requeues] == [(1, "failed")]
    assert _types(events).index("TrainingTaskRestarting") < _types(events).index("TrainingTaskRequeued")


async def test_a_task_that_always_fails_stops_after_its_budget(env: Env) -> None:
    task = await env.submit('echo "attempt $CAPSTAN_ATTEMPT"; exit 4', max_restarts=1)
    done = await env.platform.wait(task.id, "Succeeded", "Failed")
    assert done.status == "Failed" and done.exit_code == 4
    assert (done.attempt, done.restarts_used) == (1, 1)
    assert "all 1 automatic restart(s) used" in done.failure_reason
    await asyncio.sleep(1.0)  # nothing more runs
    assert [ln for ln in await env.platform.lines(task.id) if ln.startswith("attempt ")] == ["attempt 0", "attempt 1"]
    types = _types(await env.events(task.id))
    assert types.count("TrainingTaskRestarting") == 1 and types.count("TrainingTaskRequeued") == 1
    assert types[-2:] == ["TrainingTaskEnded", "WorkloadWithdrawn"]  # the scheduler's contract beside it


async def test_the_other_instances_of_a_failed_attempt_are_stopped_gracefully(env: Env) -> None:
    task = await env.submit(
        'if [ "$CAPSTAN_ATTEMPT" = 0 ] && [ "$INDEX" = 1 ]; then sleep 2; echo "instance 1 fails"; exit 5; fi; '
        "if [ \"$CAPSTAN_ATTEMPT\" = 0 ]; then trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done; fi; "
        'echo "ok $INDEX"',
        instance_count=2, max_restarts=2, stop_grace_seconds=10,
    )
    done = await env.platform.wait(task.id, "Succeeded", "Failed")
    assert done.status == "Succeeded", done.failure_reason
    assert (done.attempt, done.restarts_used, done.max_restarts) == (1, 1, 2)
    lines = await env.platform.lines(task.id)
    assert "got-term" in lines and sorted(ln for ln in lines if ln.startswith("ok ")) == ["ok 0", "ok 1"]
    events = await env.events(task.id)
    exits = [(e.index, e.exit_code) for e in events if e.TYPE == "TrainingInstanceExited"]
    assert exits[:2] == [(1, 5), (0, 0)]  # the failure, then the survivor leaving on SIGTERM (its trap: exit 0)


async def test_an_eviction_does_not_use_the_budget(env: Env) -> None:
    low = await env.submit(
        "case $CAPSTAN_ATTEMPT in "
        "0) trap 'echo evicted; exit 0' TERM; echo ready; while true; do sleep 0.1; done;; "
        '1) echo "failing"; exit 3;; '
        '*) echo "recovered";; esac',
        cpu=2, max_restarts=1, name="low", stop_grace_seconds=10,
    )
    await env.platform.wait(low.id, "Running")
    for _ in range(100):  # its trap is in place
        if "ready" in await env.platform.lines(low.id):
            break
        await asyncio.sleep(0.1)
    high = await env.submit("echo urgent-done", cpu=2, name="high", tags={"tier": "urgent"})
    assert (await env.platform.wait(high.id, "Succeeded", "Failed")).status == "Succeeded"
    done = await env.platform.wait(low.id, "Succeeded", "Failed")
    assert done.status == "Succeeded", done.failure_reason
    assert (done.attempt, done.preemptions, done.restarts, done.restarts_used) == (2, 1, 1, 1)
    lines = await env.platform.lines(low.id)
    assert [ln for ln in lines if ln in ("evicted", "failing", "recovered")] == ["evicted", "failing", "recovered"]
    causes = [e.cause for e in await env.events(low.id) if e.TYPE == "TrainingTaskRequeued"]
    assert causes == ["preempted", "failed"]


@pytest.mark.parametrize("value", [-1, 11])
async def test_a_budget_out_of_range_is_refused_naming_the_field(env: Env, value: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.submit("true", max_restarts=value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_restarts" in (err.value.details() or "")
    listed = await env.t.ListTrainingTasks(trainer_pb2.ListTrainingTasksRequest())
    assert listed.total == 0
