"""The training slice in-process: scheduler + trainer services and a real trainer agent running
instances under bubblewrap, over a real nats-server."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import grpc
import pytest

from capstan_proto import common_pb2, scheduler_pb2, trainer_pb2
from capstan_trainer.agent.agent import TrainerAgent

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


class Slice:
    def __init__(self, platform: Any, agent: TrainerAgent, rg_id: str) -> None:
        self.platform, self.s, self.t, self.agent, self.rg_id = platform, platform.s, platform.t, agent, rg_id

    async def submit(self, command: str, **kw: Any) -> trainer_pb2.TrainingTask:
        return await self.t.CreateTrainingTask(
            trainer_pb2.CreateTrainingTaskRequest(
                name=kw.pop("name", "task"), resource_group_id=self.rg_id, command=command,
                resources=common_pb2.Resources(cpu=1, memory_gib=1), **kw,
            )
        )

    async def get(self, task_id: str) -> trainer_pb2.TrainingTask:
        return await self.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))

    async def wait_status(self, task_id: str, statuses: tuple[str, ...], timeout: float = 30) -> trainer_pb2.TrainingTask:
        return await self.platform.wait(task_id, *statuses, timeout=timeout)

    async def logs(self, task_id: str, **kw: Any) -> list[trainer_pb2.LogLine]:
        resp = await self.t.GetLogs(trainer_pb2.GetLogsRequest(task_id=task_id, instance_index=-1, **kw))
        return list(resp.lines)


@pytest.fixture
async def slice_(platform: Any) -> Slice:
    rg = await platform.group("team")
    agent = await platform.agent(rg, "node-a", node_cpu=4, node_memory_gib=8, reconcile_s=0.3, output_sync_s=0.5)
    return Slice(platform, agent, rg)


async def test_task_runs_in_sandbox_succeeds_and_logs_are_searchable(slice_: Slice) -> None:
    task = await slice_.submit(
        'echo "cwd=$(pwd)"; cat /opt/ml/input/config/hyperparameters.json; echo; echo oops >&2; '
        "echo done > /opt/ml/model/weights.txt",
        hyperparameters_json='{"lr": 0.5, "epochs": 2}',
    )
    done = await slice_.wait_status(task.id, ("Succeeded", "Failed"))
    assert done.status == "Succeeded" and done.exit_code == 0
    assert done.instances[0].node_id == slice_.agent.node_id
    lines = await slice_.logs(task.id)
    text = [ln.line for ln in lines]
    assert "cwd=/opt/ml/code" in text
    assert any('"lr": 0.5' in x for x in text)
    assert [ln.stream for ln in lines if ln.line == "oops"] == ["stderr"]
    assert [ln.line for ln in await slice_.logs(task.id, keyword="OOPS")] == ["oops"]
    # time range: nothing before the task existed, everything up to now
    assert await slice_.logs(task.id, end_ms=done.created_at_ms - 60_000) == []
    assert len(await slice_.logs(task.id, start_ms=done.created_at_ms - 1000)) == len(lines)
    model = slice_.agent.executor.log_path(task.id, 0).parent / "model" / "weights.txt"
    assert model.read_text().strip() == "done"


async def test_nonzero_exit_fails_with_the_code(slice_: Slice) -> None:
    task = await slice_.submit("echo bad; exit 7")
    done = await slice_.wait_status(task.id, ("Succeeded", "Failed"))
    assert done.status == "Failed" and done.exit_code == 7
    assert "exited with code 7" in done.failure_reason


async def test_stop_kills_the_process_tree_within_grace(slice_: Slice) -> None:
    task = await slice_.submit(
        "trap 'echo got-term; exit 0' TERM; echo trap-set; sleep 1000 & while true; do sleep 0.1; done",
        stop_grace_seconds=5,
    )
    await slice_.wait_status(task.id, ("Running",))
    # "Running" means the sandbox runs; stop once the command has its trap in place
    for _ in range(100):
        if "trap-set" in [ln.line for ln in await slice_.logs(task.id)]:
            break
        await asyncio.sleep(0.1)
    await slice_.t.StopTrainingTask(trainer_pb2.StopTrainingTaskRequest(id=task.id))
    done = await slice_.wait_status(task.id, ("Stopped",), timeout=15)
    assert done.status == "Stopped"
    assert "got-term" in [ln.line for ln in await slice_.logs(task.id)]
    status = slice_.agent.executor.status(task.id, 0)
    assert status.state == "exited"


async def test_two_instance_task_and_follow_by_sequence(slice_: Slice) -> None:
    task = await slice_.submit('echo "rank=$RANK of $WORLD_SIZE"', instance_count=2)
    done = await slice_.wait_status(task.id, ("Succeeded", "Failed"))
    assert done.status == "Succeeded"
    lines = await slice_.logs(task.id)
    assert sorted(ln.line for ln in lines if ln.line.startswith("rank=")) == ["rank=0 of 2", "rank=1 of 2"]
    assert await slice_.logs(task.id, after_seq=max(ln.seq for ln in lines)) == []


async def test_the_agent_deploys_after_its_checks_including_the_sandbox(slice_: Slice) -> None:
    records = await slice_.s.ListHealthChecks(scheduler_pb2.ListHealthChecksRequest(node_id=slice_.agent.node_id))
    (deploy,) = records.items
    assert deploy.trigger == "deploy" and deploy.ok
    assert {c.name: c.ok for c in deploy.checks} == {"disk": True, "memory": True, "gpus": True, "sandbox": True}
    assert slice_.agent.membership.state == "Running"


async def test_a_batch_read_the_trainer_refuses_falls_back_to_one_read_per_task(slice_: Slice) -> None:
    """One id the trainer refuses fails the agent's batched read whole; the agent then reads its tasks one
    by one, so the others still run (here every batch is refused: the task runs all the same)."""
    async def refuse(*_args: Any, **_kw: Any) -> None:
        raise grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   "ids[3]: 'x y' is not a valid id")

    slice_.agent.trainer.GetTrainingTasks = refuse  # type: ignore[method-assign]
    task = await slice_.submit("echo fine")
    done = await slice_.wait_status(task.id, ("Succeeded", "Failed"))
    assert done.status == "Succeeded"
