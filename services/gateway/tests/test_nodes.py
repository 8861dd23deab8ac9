"""Nodes through the gateway, against the real scheduler service (a node joins as its agent would)."""

from __future__ import annotations

import httpx

from capstan_core import grpcutil
from capstan_gateway import GatewaySettings
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

RG = "/api/v1/resource-groups"


async def test_nodes_of_a_group(api: httpx.AsyncClient, platform_settings: GatewaySettings) -> None:
    rg = (await api.post(RG, json={"name": "pool"})).json()
    other = (await api.post(RG, json={"name": "other"})).json()
    # A node joins through its agent (gRPC), not through the management API.
    ch = grpcutil.channel(platform_settings.scheduler_addr)
    try:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        await stub.JoinNode(
            scheduler_pb2.JoinNodeRequest(
                resource_group_id=rg["id"], name="n1", cpu=8, memory_gib=32, gpus={"A100": 2}, agent_kind="trainer"
            )
        )
    finally:
        await ch.close()
    page = (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"]})).json()
    assert page["total"] == 1
    node = page["items"][0]
    assert node["resource_group_id"] == rg["id"] and node["name"] == "n1"
    assert node["cpu"] == 8 and node["memory_gib"] == 32 and node["gpus"] == {"A100": 2}
    assert node["allocated"] == {"cpu": 0, "memory_gib": 0, "gpus": {}}
    assert node["agent_kind"] == "trainer" and node["state"]
    assert node["joined_at"] and node["last_heartbeat_at"]
    assert (await api.get("/api/v1/nodes", params={"resource_group_id": other["id"]})).json()["total"] == 0
    assert (await api.get("/api/v1/nodes")).json()["total"] == 1
    assert (await api.get(f"{RG}/{rg['id']}")).json()["node_count"] == 1
