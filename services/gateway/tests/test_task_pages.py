"""Task lists page by keyset (the last task's submit order), so pages stay right while tasks are submitted."""

from __future__ import annotations

import base64

import httpx

TASKS = "/api/v1/training-tasks"


async def _group(api: httpx.AsyncClient) -> str:
    r = await api.post("/api/v1/resource-groups", json={"name": "pages"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _submit(api: httpx.AsyncClient, rg: str, names: list[str]) -> list[str]:
    items = [{"name": n, "resource_group_id": rg, "command": "true"} for n in names]
    r = await api.post(f"{TASKS}/batch", json={"items": items})
    assert r.status_code == 201, r.text
    return [t["id"] for t in r.json()["items"]]


async def test_pages_walk_every_task_once_newest_first_even_while_tasks_arrive(api: httpx.AsyncClient) -> None:
    rg = await _group(api)
    ids = await _submit(api, rg, [f"t{i}" for i in range(23)])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = (await api.get(TASKS, params={"resource_group_id": rg, "page_size": 5, "page_token": token})).json()
        assert page["total"] >= 23
        seen += [t["id"] for t in page["items"]]
        pages += 1
        if pages == 2:  # new tasks arrive mid-walk: they are newer than the first page, so never shown here
            await _submit(api, rg, ["late-1", "late-2"])
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(ids))  # newest first, none twice, none skipped
    assert pages == 5


async def test_filters_page_too_and_bad_tokens_are_refused(api: httpx.AsyncClient) -> None:
    rg = await _group(api)
    await _submit(api, rg, [f"t{i}" for i in range(6)])
    first = (await api.get(TASKS, params={"only_mine": "true", "resource_group_id": rg, "page_size": 4})).json()
    rest = (await api.get(TASKS, params={"only_mine": "true", "resource_group_id": rg, "page_size": 4,
                                         "page_token": first["next_page_token"]})).json()
    assert len(first["items"]) == 4 and len(rest["items"]) == 2 and rest["next_page_token"] == ""
    offset = base64.urlsafe_b64encode(b"4").decode()  # a token of the offset pages before: still answered
    legacy = (await api.get(TASKS, params={"resource_group_id": rg, "page_size": 4, "page_token": offset})).json()
    assert [t["id"] for t in legacy["items"]] == [t["id"] for t in rest["items"]]
    for bad in ("not-base64!", base64.urlsafe_b64encode(b"kx").decode(), base64.urlsafe_b64encode(b"k-1").decode()):
        r = await api.get(TASKS, params={"page_token": bad})
        assert r.status_code == 400 and "page_token" in r.json()["error"]["message"]
