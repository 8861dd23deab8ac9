"""An inference agent joins a resource group; the inference service lists it, Running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from capstan_core.capacity import Capacity
from capstan_core.membership import NodeMembership
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_proto import inference_pb2, inference_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER


async def test_agent_joins_by_group_name_and_is_listed(tmp_path: Path, nats_server: Any) -> None:
    sched = Service(SCHEDULER, ServiceSettings(data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    inf = Service(INFERENCE, ServiceSettings(data_dir=tmp_path / "i", nats_url=nats_server.url))
    await inf.start()
    chs, chi = grpc.aio.insecure_channel(sched.address), grpc.aio.insecure_channel(inf.address)
    try:
        s = scheduler_pb2_grpc.SchedulerStub(chs)
        rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="serving"))
        m = NodeMembership(s, resource_group="serving", node_name="gpu-box", agent_kind="inference",
                           capacity=Capacity(cpu=8, memory_gib=32, gpus={"A10": 2}, simulated_gpus=True))
        node_id = await m.join()
        assert m.rg_id == rg.id
        stub = inference_pb2_grpc.InferenceStub(chi)
        for _ in range(100):
            items = (await stub.ListAgents(inference_pb2.ListAgentsRequest())).items
            if items and items[0].state == "Running":
                break
            await asyncio.sleep(0.05)
        assert [(a.node_id, a.name, a.state) for a in items] == [(node_id, "gpu-box", "Running")]
        node = (await s.ListNodes(scheduler_pb2.ListNodesRequest(resource_group_id=rg.id))).items[0]
        assert dict(node.gpus) == {"A10": 2} and node.agent_kind == "inference"
        # joining again with the same name is the same node, and appends nothing new
        assert await m.join() == node_id
    finally:
        await chs.close()
        await chi.close()
        await inf.stop()
        await sched.stop()
