"""What tests that drive the trainer over gRPC share: waiting for a task's status, reading its logs and
outputs, and stopping test agents so that no test inherits another's sandboxes. Test support only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from capstan_proto import trainer_pb2, trainer_pb2_grpc
from capstan_trainer.agent.agent import TrainerAgent


class TaskReads:
    """Reads of one trainer (``self.t``) that tests wait on."""

    t: trainer_pb2_grpc.TrainerStub
    wait_timeout = 40.0  # seconds, when a wait names none

    async def wait(self, task_id: str, *statuses: str, timeout: float | None = None) -> trainer_pb2.TrainingTask:
        """The task once it is in one of ``statuses``; fails the test past ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + (timeout or self.wait_timeout)
        while True:
            got = await self.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))
            if got.status in statuses:
                return got
            assert asyncio.get_running_loop().time() < deadline, f"{task_id} is {got.status}, wanted {statuses}"
            await asyncio.sleep(0.1)

    async def lines(self, task_id: str) -> list[str]:
        """Every log line of every instance of the task."""
        resp = await self.t.GetLogs(trainer_pb2.GetLogsRequest(task_id=task_id, instance_index=-1))
        return [ln.line for ln in resp.lines]

    async def output(self, task_id: str, index: int, path: str) -> bytes:
        """One output file of the task, read back through the trainer's ReadOutput."""
        data = b""
        async for chunk in self.t.ReadOutput(trainer_pb2.ReadOutputRequest(task_id=task_id, instance_index=index,
                                                                          path=path)):
            data += chunk.data
        return data


async def stop_agents(agents: Iterable[TrainerAgent], timeout: float = 15) -> None:
    """Stop the agents and their instances, and wait (bounded) for the runners to end and undo their
    containment."""
    agents = list(agents)
    for agent in agents:
        await agent.stop()
        for key in agent.executor.list_instances():
            agent.executor.stop(*key)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline and any(
        a.executor.status(*k).state == "running" for a in agents for k in a.executor.list_instances()
    ):
        await asyncio.sleep(0.1)
