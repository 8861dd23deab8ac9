"""An inference agent joins a resource group; the inference service lists it, Running."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from capstan_agentkit.membership import NodeMembership
from capstan_core import grpcutil, nodeauth
from capstan_core.capacity import Capacity
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_proto import inference_pb2, inference_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER


async def test_agent_joins_with_a_join_token_and_is_listed(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> None:
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    inf = Service(INFERENCE, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "i", nats_url=nats_server.url))
    await inf.start()
    chs, chi = admin_channel(sched.address, "scheduler", secrets_dir), admin_channel(inf.address, "inference", secrets_dir)
    try:
        s = scheduler_pb2_grpc.SchedulerStub(chs)
        rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="serving"))
        token = await s.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=rg.id))
        creds = await nodeauth.ensure(
            directory=tmp_path / "agent" / "credentials", node_name="gpu-box", resource_group="default",
            agent_kind="inference", bootstrap_addr=sched.bootstrap_address, ca_file=secrets_dir / "ca.crt",
            join_token=token.token,
        )
        assert creds.resource_group_id == rg.id  # the token decided the group
        node_ch = grpcutil.channel(sched.address, "scheduler", creds.tls)
        m = NodeMembership(scheduler_pb2_grpc.SchedulerStub(node_ch), resource_group=creds.resource_group_id,
                           node_name="gpu-box", agent_kind="inference",
                           capacity=Capacity(cpu=8, memory_gib=32, gpus={"A10": 2}, simulated_gpus=True))
        node_id = await m.join()
        assert node_id == creds.node_id
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
        await node_ch.close()
    finally:
        await chs.close()
        await chi.close()
        await inf.stop()
        await sched.stop()
