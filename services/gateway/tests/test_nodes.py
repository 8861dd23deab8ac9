"""Nodes through the gateway, against the real scheduler service (a node joins as its agent would)."""

from __future__ import annotations

import asyncio

import httpx

from capstan_core.testing import admin_channel
from capstan_gateway import GatewaySettings
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

RG = "/api/v1/resource-groups"


async def test_nodes_of_a_group(api: httpx.AsyncClient, platform_settings: GatewaySettings) -> None:
    rg = (await api.post(RG, json={"name": "pool"})).json()
    other = (await api.post(RG, json={"name": "other"})).json()
    # A node joins through its agent (gRPC), not through the management API.
    ch = admin_channel(platform_settings.scheduler_addr, "scheduler", platform_settings.secrets_path)
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


async def test_node_history_health_checks_and_removing_a_released_record(
    api: httpx.AsyncClient, platform_settings: GatewaySettings
) -> None:
    rg = (await api.post(RG, json={"name": "pool"})).json()
    ch = admin_channel(platform_settings.scheduler_addr, "scheduler", platform_settings.secrets_path)
    try:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        hc = scheduler_pb2.HealthCheck
        failed = await stub.JoinNode(scheduler_pb2.JoinNodeRequest(
            resource_group_id=rg["id"], name="bad", cpu=8, memory_gib=32, agent_kind="trainer",
            checks=[hc(name="disk", ok=False, detail="0.2 GiB free (needs 1)")]))
        good = await stub.JoinNode(scheduler_pb2.JoinNodeRequest(
            resource_group_id=rg["id"], name="good", cpu=8, memory_gib=32, agent_kind="trainer",
            checks=[hc(name="disk", ok=True, detail="90 GiB free")]))
        await stub.ReportHealthCheck(scheduler_pb2.ReportHealthCheckRequest(
            node_id=good.id, checks=[hc(name="disk", ok=False, detail="full")]))
    finally:
        await ch.close()
    active = (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"]})).json()
    assert [(n["name"], n["state"]) for n in active["items"]] == [("good", "Abnormal")]
    assert active["items"][0]["state_reason"] == "health check failed: disk: full"
    history = (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"], "view": "history"})).json()
    assert [(n["id"], n["state"]) for n in history["items"]] == [(failed.id, "DeployFailed")]
    assert "0.2 GiB free" in history["items"][0]["state_reason"]
    bad_view = await api.get("/api/v1/nodes", params={"view": "old"})
    assert bad_view.status_code == 400 and "view" in bad_view.text

    records = (await api.get("/api/v1/nodes/health-checks", params={"resource_group_id": rg["id"]})).json()
    assert records["total"] == 3
    assert [(r["node_id"], r["trigger"], r["ok"]) for r in records["items"]] == [
        (good.id, "periodic", False), (good.id, "deploy", True), (failed.id, "deploy", False)]
    assert records["items"][0]["checks"] == [{"name": "disk", "ok": False, "detail": "full"}]
    one = (await api.get("/api/v1/nodes/health-checks", params={"node_id": failed.id})).json()
    assert [r["node_id"] for r in one["items"]] == [failed.id]
    assert (await api.get("/api/v1/nodes/health-checks", params={"node_id": "node-nope"})).status_code == 404

    refused = await api.delete(f"/api/v1/nodes/{good.id}")
    assert refused.status_code == 409 and "release it first" in refused.json()["error"]["message"]
    assert (await api.post(f"/api/v1/nodes/{good.id}/release")).status_code == 200
    for _ in range(100):
        n = (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"]})).json()["items"][0]
        if n["state"] == "Released":
            break
        await asyncio.sleep(0.1)
    removed = await api.delete(f"/api/v1/nodes/{good.id}")
    assert removed.status_code == 200 and removed.json()["state"] == "Unused"
    history = (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"], "view": "history"})).json()
    assert {n["state"] for n in history["items"]} == {"DeployFailed", "Unused"}
    assert (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"]})).json()["total"] == 0
