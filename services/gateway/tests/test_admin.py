"""/api/v1/admin/quarantine at the edge: authentication, admins only, and services that cannot answer."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
from fastapi import FastAPI

from capstan_gateway import GatewaySettings, create_app
from capstan_gateway.auth import Principal


async def test_the_quarantine_needs_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/admin/quarantine")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


GatewayFactory = Callable[[GatewaySettings | FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]


async def test_only_an_administrator_reads_the_quarantine(settings: GatewaySettings, gateway_for: GatewayFactory) -> None:
    app: FastAPI = create_app(settings)

    class NotAdmin:
        def authenticate(self, token: str | None) -> Principal:
            return Principal(name="bob", is_admin=False)

    async with gateway_for(app) as c:
        app.state.authenticator = NotAdmin()
        r = await c.get("/api/v1/admin/quarantine", headers={"Authorization": "Bearer anything"})
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
