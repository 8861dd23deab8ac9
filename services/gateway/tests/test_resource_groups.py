"""Resource groups through the gateway, against the real scheduler service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx

RG = "/api/v1/resource-groups"
POLICY = {
    "Version": "1.0",
    "ResourceRule": {"DefaultPriority": 0, "DefaultQueue": 0, "Preempted": 1},
    "TaskRules": [
        {"AttrRules": [{"ValueType": "Tag", "Key": "task-type", "Value": "speech"}], "ScheduleRule": {"Priority": 1}}
    ],
}


async def test_create_get_list(api: httpx.AsyncClient) -> None:
    r = await api.post(RG, json={"name": "gpu-pool", "tags": {"team": "nlp"}, "policy": POLICY})
    assert r.status_code == 201, r.text
    rg = r.json()
    assert rg["id"].startswith("rsg-")
    assert rg["name"] == "gpu-pool" and rg["tags"] == {"team": "nlp"}
    assert rg["policy"]["ResourceRule"]["Preempted"] == 1
    assert rg["creator"] == "admin" and rg["node_count"] == 0 and rg["region"] == "default"
    created = datetime.fromisoformat(rg["created_at"])
    assert created.tzinfo is not None and created.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60

    got = await api.get(f"{RG}/{rg['id']}")
    assert got.status_code == 200 and got.json() == rg
    listed = (await api.get(RG)).json()
    assert listed == {"items": [rg], "next_page_token": "", "total": 1}


async def test_a_region_other_than_the_installs_is_refused(api: httpx.AsyncClient) -> None:
    r = await api.post(RG, json={"name": "far", "region": "eu-frankfurt"})
    assert r.status_code == 400 and "its region is 'default'" in r.json()["error"]["message"], r.text
    assert (await api.get(RG)).json()["total"] == 0
    assert (await api.post(RG, json={"name": "here", "region": "default"})).status_code == 201


async def test_null_policy_gets_the_default(api: httpx.AsyncClient) -> None:
    r = await api.post(RG, json={"name": "cpu", "policy": None})
    assert r.status_code == 201, r.text
    assert r.json()["policy"]["Version"] == "1.0"


async def test_pagination(api: httpx.AsyncClient) -> None:
    ids = []
    for i in range(3):
        r = await api.post(RG, json={"name": f"rg-{i}"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    seen, token = [], ""
    for _ in range(4):
        page = (await api.get(RG, params={"page_size": 1, "page_token": token})).json()
        assert page["total"] == 3 and len(page["items"]) <= 1
        seen += [rg["id"] for rg in page["items"]]
        token = page["next_page_token"]
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 3


async def test_bad_page_token_is_400(api: httpx.AsyncClient) -> None:
    r = await api.get(RG, params={"page_token": "not-a-token"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_argument"
    assert "page_token" in r.json()["error"]["message"]


async def test_unknown_id_is_404(api: httpx.AsyncClient) -> None:
    r = await api.get(f"{RG}/rsg-00000000")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": "resource group rsg-00000000 does not exist"}}


async def test_invalid_policy_is_400_and_appends_nothing(
    api: httpx.AsyncClient, event_count: Callable[[], Awaitable[int]]
) -> None:
    before = await event_count()
    r = await api.post(RG, json={"name": "bad", "policy": {"ResourceRule": {"DefaultQueue": 7}}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_argument"
    assert "DefaultQueue" in r.json()["error"]["message"]
    bad_name = await api.post(RG, json={"name": "no spaces!"})
    assert bad_name.status_code == 400, bad_name.text
    assert await event_count() == before


async def test_idempotency_key_creates_once(api: httpx.AsyncClient, event_count: Callable[[], Awaitable[int]]) -> None:
    headers = {"Idempotency-Key": "k-123"}
    first = await api.post(RG, json={"name": "once"}, headers=headers)
    assert first.status_code == 201, first.text
    after_first = await event_count()
    again = await api.post(RG, json={"name": "once"}, headers=headers)
    assert again.status_code in (200, 201), again.text
    assert again.json()["id"] == first.json()["id"]
    assert await event_count() == after_first
    assert (await api.get(RG)).json()["total"] == 1


async def test_edit_and_delete(api: httpx.AsyncClient, event_count: Callable[[], Awaitable[int]]) -> None:
    rg = (await api.post(RG, json={"name": "edit-me", "tags": {"a": "1"}, "description": "first"})).json()
    assert rg["description"] == "first"
    r = await api.patch(f"{RG}/{rg['id']}", json={"name": "edited", "policy": POLICY})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["tags"], r.json()["description"]) == ("edited", {"a": "1"}, "first")
    assert r.json()["policy"]["TaskRules"][0]["ScheduleRule"]["Priority"] == 1
    r = await api.patch(f"{RG}/{rg['id']}", json={"tags": {}, "policy": None})
    assert r.json()["tags"] == {} and r.json()["policy"]["TaskRules"] == []
    before = await event_count()
    bad = await api.patch(f"{RG}/{rg['id']}", json={"policy": {"ResourceRule": {"DefaultQueue": 9}}})
    assert bad.status_code == 400 and "ResourceRule.DefaultQueue must be 0, 1 or 2" in bad.json()["error"]["message"]
    assert (await api.patch(f"{RG}/{rg['id']}", json={"nmae": "typo"})).status_code == 400
    assert (await api.patch(f"{RG}/rsg-missing", json={"name": "x"})).status_code == 404
    assert await event_count() == before
    assert (await api.delete(f"{RG}/{rg['id']}")).status_code == 204
    assert (await api.get(f"{RG}/{rg['id']}")).status_code == 404
    assert (await api.delete(f"{RG}/rsg-missing")).status_code == 404


async def test_delete_refused_while_a_node_is_in_use_then_release(api: httpx.AsyncClient, platform) -> None:  # type: ignore[no-untyped-def]
    from capstan_core.testing import admin_channel
    from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

    rg = (await api.post(RG, json={"name": "busy"})).json()
    async with admin_channel(platform.scheduler.address, "scheduler", platform.scheduler.settings.secrets_path) as ch:
        node = await scheduler_pb2_grpc.SchedulerStub(ch).JoinNode(
            scheduler_pb2.JoinNodeRequest(resource_group_id=rg["id"], name="n1", cpu=2, memory_gib=2, agent_kind="trainer")
        )
    r = await api.delete(f"{RG}/{rg['id']}")
    assert r.status_code == 409 and node.id in r.json()["error"]["message"]
    assert (await api.post("/api/v1/nodes/release", json={"node_ids": []})).status_code == 400
    r = await api.post(f"/api/v1/nodes/{node.id}/release")
    assert r.status_code == 200 and r.json()["state"] == "Releasing", r.text
    import asyncio

    for _ in range(100):
        nodes = (await api.get("/api/v1/nodes", params={"resource_group_id": rg["id"]})).json()["items"]
        if nodes[0]["state"] == "Released":
            break
        await asyncio.sleep(0.05)
    assert nodes[0]["state"] == "Released"
    assert (await api.post("/api/v1/nodes/release", json={"node_ids": [node.id]})).status_code == 200  # idempotent
    assert (await api.delete(f"{RG}/{rg['id']}")).status_code == 204


async def test_queue_view(api: httpx.AsyncClient, platform) -> None:  # type: ignore[no-untyped-def]
    from capstan_core.testing import admin_channel
    from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

    rg = (await api.post(RG, json={"name": "q", "policy": {"ResourceRule": {"DefaultQueue": 0, "DefaultPriority": 4}}})).json()
    async with admin_channel(platform.scheduler.address, "scheduler", platform.scheduler.settings.secrets_path) as ch:
        await scheduler_pb2_grpc.SchedulerStub(ch).JoinNode(
            scheduler_pb2.JoinNodeRequest(resource_group_id=rg["id"], name="n1", cpu=2, memory_gib=4, gpus={"T4": 1}, agent_kind="trainer")
        )
    body = {"resource_group_id": rg["id"], "command": "x", "resources": {"cpu": 2, "memory_gib": 1}}
    first = (await api.post("/api/v1/training-tasks", json={"name": "first", **body})).json()
    import asyncio

    for _ in range(100):
        if (await api.get(f"/api/v1/training-tasks/{first['id']}")).json()["status"] == "Starting":
            break
        await asyncio.sleep(0.05)
    second = (await api.post("/api/v1/training-tasks", json={"name": "second", **body})).json()
    await asyncio.sleep(0.5)
    r = await api.get(f"{RG}/{rg['id']}/queue")
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["queue_mode"] == 0 and [i["workload_id"] for i in view["items"]] == [second["id"]]
    item = view["items"][0]
    assert item["priority"] == "P4" and item["position"] == 1 and item["reason"]
    assert view["lanes"] == [{"card_type": "T4", "total_cards": 1, "whole_machine_free_cards": 1, "fragment_free_cards": 0.0}]
    assert view["nodes"][0]["workloads"] == [first["id"]] and view["nodes"][0]["cpu_free"] == 0
    assert (await api.get(f"{RG}/rsg-missing/queue")).status_code == 404
