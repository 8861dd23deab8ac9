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
    assert rg["creator"] == "admin" and rg["node_count"] == 0
    created = datetime.fromisoformat(rg["created_at"])
    assert created.tzinfo is not None and created.utcoffset() == UTC.utcoffset(None)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60

    got = await api.get(f"{RG}/{rg['id']}")
    assert got.status_code == 200 and got.json() == rg
    listed = (await api.get(RG)).json()
    assert listed == {"items": [rg], "next_page_token": "", "total": 1}


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
