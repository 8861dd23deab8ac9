"""Three trainer agents as three nodes (declared, simulated A100s) on this machine: a 2-node gang
and fractional work run for real in sandboxes, each instance told which cards it holds."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_proto import common_pb2, scheduler_pb2, scheduler_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.agent.agent import TrainerAgent
from capstan_trainer.agent.settings import AgentSettings
from capstan_trainer.service import DEFINITION as TRAINER

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

ENV_DUMP = 'echo "node=$CAPSTAN_INSTANCE_INDEX cards=$CAPSTAN_GPU_CARDS cuda=[$CUDA_VISIBLE_DEVICES] frac=$CAPSTAN_GPU_MEMORY_FRACTION sim=$CAPSTAN_SIMULATED_GPUS"'


@pytest.fixture
async def cluster(tmp_path: Path, nats_server: Any) -> AsyncIterator[tuple[Any, list[TrainerAgent], str]]:
    sched = Service(SCHEDULER, ServiceSettings(data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address))
    await trainer.start()
    chs, cht = grpc.aio.insecure_channel(sched.address), grpc.aio.insecure_channel(trainer.address)
    s = scheduler_pb2_grpc.SchedulerStub(chs)
    policy = {"ResourceRule": {"DefaultQueue": 2}}
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="gpu", policy_json=json.dumps(policy)))
    agents = []
    for i in range(3):
        agent = TrainerAgent(AgentSettings(
            nats_url=nats_server.url, scheduler_addr=sched.address, trainer_addr=trainer.address, resource_group=rg.id,
            node_name=f"gpu-{i}", agent_dir=tmp_path / f"agent-{i}", node_cpu=4, node_memory_gib=8, node_gpus="A100:2",
            reconcile_s=0.3, data_dir=tmp_path,
        ))
        await agent.start()
        agents.append(agent)
    yield trainer_pb2_grpc.TrainerStub(cht), agents, rg.id
    for agent in agents:
        await agent.stop()
        for key in agent.executor.list_instances():
            agent.executor.stop(*key)
    await chs.close()
    await cht.close()
    await trainer.stop()
    await sched.stop()


async def _run(t: Any, rg: str, name: str, gpu: float, count: int = 1) -> Any:
    task = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name=name, resource_group_id=rg, command=ENV_DUMP, instance_count=count,
        resources=common_pb2.Resources(cpu=1, memory_gib=1, gpu_type="A100", gpu=gpu)))
    for _ in range(300):
        got = await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task.id))
        if got.status in ("Succeeded", "Failed"):
            break
        await asyncio.sleep(0.1)
    assert got.status == "Succeeded", (got.status, got.failure_reason)
    lines = (await t.GetLogs(trainer_pb2.GetLogsRequest(task_id=task.id, instance_index=-1))).lines
    return got, sorted(ln.line for ln in lines if ln.line.startswith("node="))


async def test_three_agents_a_gang_across_nodes_and_shared_cards(cluster: Any) -> None:
    t, agents, rg = cluster
    nodes = {a.node_id for a in agents}
    assert len(nodes) == 3
    gang, lines = await _run(t, rg, "gang", gpu=2, count=2)
    assert len({i.node_id for i in gang.instances}) == 2 and {i.node_id for i in gang.instances} <= nodes
    assert lines == ["node=0 cards=0:10,1:10 cuda=[] frac= sim=1", "node=1 cards=0:10,1:10 cuda=[] frac= sim=1"]
    half, lines = await _run(t, rg, "half", gpu=0.5)
    assert lines == [f"node=0 cards={lines[0].split('cards=')[1].split(' ')[0]} cuda=[] frac=0.5 sim=1"]
    assert lines[0].split("cards=")[1].startswith(("0:5", "1:5"))
