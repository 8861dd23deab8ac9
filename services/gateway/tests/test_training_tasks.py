"""Training tasks through the gateway, against the real trainer and scheduler services."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

TASKS = "/api/v1/training-tasks"


def task_body(rg_id: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "bert-finetune",
        "resource_group_id": rg_id,
        "command": "python train.py --epochs 3\necho done",
        "hyperparameters": {"lr": 0.001, "layers": [1, 2]},
        "resources": {"cpu": 2, "memory_gib": 4, "gpu_type": "A100", "gpu": 1},
        "instance_count": 2,
        "tags": {"task-type": "speech"},
    }
    body.update(over)
    return body


async def wait_status(api: httpx.AsyncClient, task_id: str, status: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        task: dict[str, Any] = (await api.get(f"{TASKS}/{task_id}")).json()
        if task["status"] == status or asyncio.get_running_loop().time() > deadline:
            return task
        await asyncio.sleep(0.1)


async def test_create_get_list(api: httpx.AsyncClient, rg_id: str) -> None:
    r = await api.post(TASKS, json=task_body(rg_id))
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["id"].startswith("train-")
    assert task["name"] == "bert-finetune" and task["resource_group_id"] == rg_id
    assert task["command"] == "python train.py --epochs 3\necho done"
    assert task["hyperparameters"] == {"lr": 0.001, "layers": [1, 2]}
    assert task["resources"] == {"cpu": 2, "memory_gib": 4, "gpu_type": "A100", "gpu": 1}
    assert task["instance_count"] == 2 and task["tags"] == {"task-type": "speech"}
    assert task["status"] in ("Submitting", "Queued")
    assert task["exit_code"] is None and task["ended_at"] is None
    assert task["creator"] == "admin" and task["stop_grace_seconds"] == 30
    assert task["created_at"]

    got = (await api.get(f"{TASKS}/{task['id']}")).json()
    assert got["id"] == task["id"] and got["hyperparameters"] == task["hyperparameters"]
    listed = (await api.get(TASKS)).json()
    assert [t["id"] for t in listed["items"]] == [task["id"]] and listed["total"] == 1
    mine = (await api.get(TASKS, params={"only_mine": "true", "resource_group_id": rg_id})).json()
    assert mine["total"] == 1
    assert (await api.get(TASKS, params={"resource_group_id": "rsg-00000000"})).json()["total"] == 0
    assert (await api.get(TASKS, params={"status": "Succeeded"})).json()["total"] == 0


async def test_defaults(api: httpx.AsyncClient, rg_id: str) -> None:
    body = {"name": "t", "resource_group_id": rg_id, "command": "true", "resources": {"cpu": 1, "memory_gib": 1}}
    r = await api.post(TASKS, json=body)
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["hyperparameters"] == {} and task["instance_count"] == 1 and task["tags"] == {}
    assert task["resources"]["gpu"] == 0 and task["resources"]["gpu_type"] == ""


async def test_pagination(api: httpx.AsyncClient, rg_id: str) -> None:
    ids = {(await api.post(TASKS, json=task_body(rg_id, name=f"t{i}"))).json()["id"] for i in range(3)}
    seen: list[str] = []
    token = ""
    while True:
        page = (await api.get(TASKS, params={"page_size": 1, "page_token": token})).json()
        seen += [t["id"] for t in page["items"]]
        token = page["next_page_token"]
        if not token or len(seen) > 3:
            break
    assert set(seen) == ids and len(seen) == 3


async def test_stop_a_queued_task(api: httpx.AsyncClient, rg_id: str) -> None:
    task = (await api.post(TASKS, json=task_body(rg_id))).json()
    r = await api.post(f"{TASKS}/{task['id']}/stop")
    assert r.status_code == 200, r.text
    assert r.json()["status"] in ("Stopping", "Stopped")
    stopped = await wait_status(api, task["id"], "Stopped")
    assert stopped["status"] == "Stopped"
    assert stopped["ended_at"] is not None
    assert stopped["exit_code"] is None  # it never ran


async def test_unknown_task_is_404(api: httpx.AsyncClient) -> None:
    for r in (await api.get(f"{TASKS}/train-00000000"), await api.post(f"{TASKS}/train-00000000/stop")):
        assert r.status_code == 404, r.text
        assert r.json()["error"] == {"code": "not_found", "message": "training task train-00000000 does not exist"}


async def test_refused_creates_append_nothing(
    api: httpx.AsyncClient, rg_id: str, event_count: Callable[[], Awaitable[int]]
) -> None:
    before = await event_count()
    for body in (
        task_body("rsg-00000000"),  # the group does not exist
        task_body(rg_id, name="bad name!"),  # a name the trainer refuses
        task_body(rg_id, command="   "),  # nothing to run
    ):
        r = await api.post(TASKS, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_argument"
    assert await event_count() == before
    assert (await api.get(TASKS)).json()["total"] == 0


async def test_idempotent_create(api: httpx.AsyncClient, rg_id: str) -> None:
    headers = {"Idempotency-Key": "submit-1"}
    first = await api.post(TASKS, json=task_body(rg_id), headers=headers)
    again = await api.post(TASKS, json=task_body(rg_id), headers=headers)
    assert first.status_code == 201 and again.status_code in (200, 201), again.text
    assert again.json()["id"] == first.json()["id"]
    assert (await api.get(TASKS)).json()["total"] == 1


async def test_logs_of_a_task_without_output(api: httpx.AsyncClient, rg_id: str) -> None:
    task = (await api.post(TASKS, json=task_body(rg_id))).json()
    r = await api.get(
        f"{TASKS}/{task['id']}/logs",
        params={"start": "2024-01-01T00:00:00Z", "end": "4102444800000", "keyword": "loss", "instance": 0},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"lines": [], "last_seq": r.json()["last_seq"]}


async def test_auto_restart_budget_is_set_and_shown(api: httpx.AsyncClient, rg_id: str) -> None:
    r = await api.post(TASKS, json=task_body(rg_id, max_restarts=3))
    assert r.status_code == 201, r.text
    task = r.json()
    assert (task["max_restarts"], task["restarts_used"], task["restarts"]) == (3, 0, 0)
    assert (task["attempt"], task["preemptions"]) == (0, 0)
    got = (await api.get(f"{TASKS}/{task['id']}")).json()
    assert got["max_restarts"] == 3
    listed = (await api.get(TASKS)).json()["items"]
    assert [t["max_restarts"] for t in listed] == [3]
    default = (await api.post(TASKS, json=task_body(rg_id, name="no-restarts"))).json()
    assert default["max_restarts"] == 0


@pytest.mark.parametrize("value", [11, -1, "three", 2.5])
async def test_auto_restart_budget_out_of_range_is_refused(
    api: httpx.AsyncClient, rg_id: str, value: Any, event_count: Callable[[], Awaitable[int]]
) -> None:
    before = await event_count()
    r = await api.post(TASKS, json=task_body(rg_id, max_restarts=value))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_argument" and error["message"].startswith("body.max_restarts: ")
    assert await event_count() == before
