"""Many training tasks in one request (``POST /api/v1/training-tasks/batch``), against the real trainer and
scheduler services: all-or-nothing checks, answers in order, idempotent retries, read-your-writes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

TASKS = "/api/v1/training-tasks"
BATCH = f"{TASKS}/batch"


@pytest.fixture
async def rg_id(api: httpx.AsyncClient) -> str:
    r = await api.post("/api/v1/resource-groups", json={"name": "sweeps"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def item(rg_id: str, i: int, **over: Any) -> dict[str, Any]:
    return {"name": f"trial-{i}", "resource_group_id": rg_id, "command": "python train.py",
            "hyperparameters": {"lr": i / 100}, "resources": {"cpu": 1, "memory_gib": 1}, **over}


async def test_a_batch_creates_every_task_in_order_and_each_can_be_read_at_once(
    api: httpx.AsyncClient, rg_id: str
) -> None:
    r = await api.post(BATCH, json={"items": [item(rg_id, i) for i in range(25)]})
    assert r.status_code == 201, r.text
    created = r.json()["items"]
    assert [t["name"] for t in created] == [f"trial-{i}" for i in range(25)]
    assert [t["hyperparameters"] for t in created] == [{"lr": i / 100} for i in range(25)]
    assert len({t["id"] for t in created}) == 25 and all(t["creator"] == "admin" for t in created)
    for t in created:  # read-your-writes: each is there the moment the batch is answered
        got = await api.get(f"{TASKS}/{t['id']}")
        assert got.status_code == 200 and got.json()["name"] == t["name"]
    listed = (await api.get(TASKS, params={"resource_group_id": rg_id, "page_size": 100})).json()
    assert listed["total"] == 25


async def test_a_retried_batch_creates_nothing_more(api: httpx.AsyncClient, rg_id: str) -> None:
    body = {"items": [item(rg_id, i) for i in range(10)]}
    headers = {"Idempotency-Key": "sweep-7"}
    first = await api.post(BATCH, json=body, headers=headers)
    again = await api.post(BATCH, json=body, headers=headers)
    assert first.status_code == again.status_code == 201, again.text
    assert [t["id"] for t in again.json()["items"]] == [t["id"] for t in first.json()["items"]]
    assert (await api.get(TASKS, params={"resource_group_id": rg_id})).json()["total"] == 10
    # a single submit with one of the batch's keys is that task too
    single = await api.post(TASKS, json=item(rg_id, 3), headers={"Idempotency-Key": "sweep-7:3"})
    assert single.json()["id"] == first.json()["items"][3]["id"]


async def test_one_bad_item_refuses_the_batch_naming_it_and_appends_nothing(
    api: httpx.AsyncClient, rg_id: str, event_count: Callable[[], Awaitable[int]]
) -> None:
    before = await event_count()
    items = [item(rg_id, i) for i in range(5)]
    items[3]["name"] = "-bad name"
    r = await api.post(BATCH, json={"items": items})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith("items[3].name: name must be")
    items[3] = item("rsg-missing", 3)
    r = await api.post(BATCH, json={"items": items})
    assert r.status_code == 400 and "rsg-missing does not exist" in r.json()["error"]["message"]
    r = await api.post(BATCH, json={"items": []})
    assert r.status_code == 400
    r = await api.post(BATCH, json={"items": [{**item(rg_id, 0), "unknown": 1}]})
    assert r.status_code == 400 and "unknown" in r.json()["error"]["message"]
    assert await event_count() == before
