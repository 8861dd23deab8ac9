"""Making accounts and keys through the API, for tests acting as several tenants and sub-accounts."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Acct:
    id: str
    name: str
    token: str  # an API key: ck.<id>.<secret>
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def new_account(
    client: httpx.AsyncClient, name: str, *, kind: str = "sub", policies: list[str] | None = None,
    password: str | None = None, as_: Acct | None = None,
) -> Acct:
    """An account made by the client's own credentials (or ``as_``'s), with one API key."""
    headers = as_.headers if as_ else {}
    body: dict[str, object] = {"name": name, "kind": kind, "policies": policies or []}
    if password:
        body["password"] = password
    r = await client.post("/api/v1/accounts", json=body, headers=headers)
    assert r.status_code == 201, r.text
    account_id = r.json()["id"]
    k = await client.post(f"/api/v1/accounts/{account_id}/keys", json={}, headers=headers)
    assert k.status_code == 201, k.text
    return Acct(account_id, name, k.json()["token"], k.json()["id"])
