"""Three trainer agents as three nodes (declared, simulated A100s) on this machine: a 2-node gang
and fractional work run for real in sandboxes, each instance told which cards it holds."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from capstan_proto import common_pb2, trainer_pb2
from capstan_trainer.agent.agent import TrainerAgent

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

ENV_DUMP = 'echo "node=$CAPSTAN_INSTANCE_INDEX cards=$CAPSTAN_GPU_CARDS cuda=[$CUDA_VISIBLE_DEVICES] frac=$CAPSTAN_GPU_MEMORY_FRACTION sim=$CAPSTAN_SIMULATED_GPUS"'


@pytest.fixture
async def cluster(platform: Any) -> tuple[Any, list[TrainerAgent], str]:
    rg = await platform.group("gpu", {"ResourceRule": {"DefaultQueue": 2}})
    agents = [await platform.agent(rg, f"gpu-{i}", node_cpu=4, node_memory_gib=8, node_gpus="A100:2", reconcile_s=0.3)
              for i in range(3)]
    return platform, agents, rg


async def _run(platform: Any, rg: str, name: str, gpu: float, count: int = 1) -> Any:
    task = await platform.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name=name, resource_group_id=rg, command=ENV_DUMP, instance_count=count,
        resources=common_pb2.Resources(cpu=1, memory_gib=1, gpu_type="A100", gpu=gpu)))
    got = await platform.wait(task.id, "Succeeded", "Failed", timeout=30)
    assert got.status == "Succeeded", (got.status, got.failure_reason)
    return got, sorted(ln for ln in await platform.lines(task.id) if ln.startswith("node="))


async def test_three_agents_a_gang_across_nodes_and_shared_cards(cluster: Any) -> None:
    platform, agents, rg = cluster
    nodes = {a.node_id for a in agents}
    assert len(nodes) == 3
    gang, lines = await _run(platform, rg, "gang", gpu=2, count=2)
    assert len({i.node_id for i in gang.instances}) == 2 and {i.node_id for i in gang.instances} <= nodes
    assert lines == ["node=0 cards=0:10,1:10 cuda=[] frac= sim=1", "node=1 cards=0:10,1:10 cuda=[] frac= sim=1"]
    half, lines = await _run(platform, rg, "half", gpu=0.5)
    assert lines == [f"node=0 cards={lines[0].split('cards=')[1].split(' ')[0]} cuda=[] frac=0.5 sim=1"]
    assert lines[0].split("cards=")[1].startswith(("0:5", "1:5"))
