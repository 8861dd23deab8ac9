"""The trainer agent keeps working whatever reaches it (issue #7, parts 3 and 4): poison published on
``capstan.wake.agents`` (its wake-up subscription; only services may publish there) never stops it, and one instance it cannot start is set aside
while the other tasks on the node run to their end."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from capstan_core.metrics import LOOP_ITEM_FAILURES, LOOP_STEPS
from capstan_core.streams import WAKE_AGENTS
from capstan_core.testing import platform_poison
from capstan_proto import common_pb2, trainer_pb2
from capstan_trainer.agent import agent as agent_module
from capstan_trainer.agent.agent import RECONCILE, TrainerAgent

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


async def test_poison_and_one_unstartable_instance_do_not_stop_the_agent(
    platform: Any, monkeypatch: pytest.MonkeyPatch, nc: Any
) -> None:
    rg = await platform.group("team")
    agent: TrainerAgent = await platform.agent(rg, "node-a", node_cpu=4, node_memory_gib=8, reconcile_s=0.2)
    for poison in platform_poison():  # as a buggy or compromised service could (an admin connection here)
        await nc.publish(WAKE_AGENTS, poison.payload)
    await nc.flush()

    real = agent_module.TrainerAgent._spec

    def spec(self: TrainerAgent, task: trainer_pb2.TrainingTask, index: int, *args: Any) -> Any:
        if task.name == "bad":  # the named fault: this one instance cannot be started on this node
            raise RuntimeError("injected fault starting bad")
        return real(self, task, index, *args)

    monkeypatch.setattr(agent_module.TrainerAgent, "_spec", spec)

    async def submit(name: str) -> trainer_pb2.TrainingTask:
        return await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
            name=name, resource_group_id=rg, command="echo ran", resources=common_pb2.Resources(cpu=1, memory_gib=1),
            idempotency_key=f"{name}-1"))  # keys whose ids order bad before good

    bad = await submit("bad")
    good = await submit("good")
    assert bad.id < good.id  # the agent converges instances in task-id order: the bad one comes first
    done = await platform.wait(good.id, "Succeeded", "Failed")
    assert done.status == "Succeeded" and done.instances[0].node_id == agent.node_id
    assert (await platform.t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=bad.id))).status == "Starting"
    assert agent.counters.get(LOOP_ITEM_FAILURES, loop=RECONCILE) >= 1
    assert agent.counters.get(LOOP_STEPS, loop=RECONCILE) >= 1
    assert all(not t.done() for t in agent._tasks)  # heartbeat and reconcile loops still run
