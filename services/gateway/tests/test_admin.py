"""/api/v1/admin/quarantine at the edge: authentication, admins only, and services that cannot answer."""

from __future__ import annotations

import httpx

from .accounts_helpers import new_account


async def test_the_quarantine_needs_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/admin/quarantine")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"



async def test_only_an_administrator_reads_the_quarantine(admin: httpx.AsyncClient) -> None:
    tenant = await new_account(admin, "team-b", kind="main")
    r = await admin.get("/api/v1/admin/quarantine", headers={"Authorization": f"Bearer {tenant.token}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


async def test_services_that_cannot_answer_are_listed_not_fatal(admin: httpx.AsyncClient) -> None:
    r = await admin.get("/api/v1/admin/quarantine", params={"limit": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["items"] == [] and body["counters"] == []
    assert [(s["service"], s["reachable"]) for s in body["services"]] == [("scheduler", False), ("trainer", False)]
    assert all("not reachable" in s["error"] for s in body["services"])


async def test_limit_is_bounded(admin: httpx.AsyncClient) -> None:
    r = await admin.get("/api/v1/admin/quarantine", params={"limit": 501})
    assert r.status_code == 400
