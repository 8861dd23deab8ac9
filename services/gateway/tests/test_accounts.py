"""Accounts, keys, sessions and policies at the gateway (#8); the services are down here, so a request
that passes authentication and authorization answers 503 (the owning service), one refused 401/403/404."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from capstan_gateway import GatewaySettings, create_app
from capstan_gateway.identity import credentials as cred
from capstan_gateway.identity.tables import api_keys

from .accounts_helpers import Acct, new_account

GatewayFactory = Callable[[GatewaySettings | FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]
PASSED = 503  # past the gateway's checks: the owning service (down here) was called


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_operator_is_created_once_with_a_key_and_a_password(
    admin: httpx.AsyncClient, settings: GatewaySettings
) -> None:
    me = (await admin.get("/api/v1/whoami")).json()
    assert me["account"]["name"] == "admin" and me["account"]["kind"] == "main" and me["account"]["is_operator"]
    assert me["source"] == "key" and me["operator_tenant"]
    password = (settings.data_dir / "admin-password").read_text()
    r = await admin.post("/api/v1/login", json={"name": "admin", "password": password}, headers={"Authorization": ""})
    assert r.status_code == 200, r.text
    session = r.json()["token"]
    who = await admin.get("/api/v1/whoami", headers=bearer(session))
    assert who.status_code == 200 and who.json()["source"] == "session" and who.json()["key_id"] == ""


async def test_login_refuses_a_wrong_password_and_unknown_names_alike(admin: httpx.AsyncClient) -> None:
    await new_account(admin, "alice", password="correct horse battery")
    answers = [
        await admin.post("/api/v1/login", json={"name": n, "password": p}, headers={"Authorization": ""})
        for n, p in (("alice", "wrong password!!"), ("nobody", "correct horse battery"))
    ]
    assert [a.status_code for a in answers] == [401, 401]
    assert answers[0].json() == answers[1].json()
    ok = await admin.post("/api/v1/login", json={"name": "alice", "password": "correct horse battery"})
    assert ok.status_code == 200 and ok.json()["account"]["name"] == "alice"


async def test_sessions_expire_are_signed_and_end_with_a_password_change(
    admin: httpx.AsyncClient, settings: GatewaySettings
) -> None:
    alice = await new_account(admin, "alice", password="correct horse battery", policies=["FullAccess"])
    key = (settings.data_dir / "session-key").read_bytes()
    now = int(time.time() * 1000)
    expired = cred.session_token(key, alice.id, now - 1, 0)
    forged = cred.session_token(b"x" * 32, alice.id, now + 60_000, 0)
    for token in (expired, forged, expired[:-2] + "AA"):
        r = await admin.get("/api/v1/whoami", headers=bearer(token))
        assert r.status_code == 401, token
    login = {"name": "alice", "password": "correct horse battery"}
    session = (await admin.post("/api/v1/login", json=login)).json()["token"]
    assert (await admin.get("/api/v1/whoami", headers=bearer(session))).status_code == 200
    r = await admin.put(f"/api/v1/accounts/{alice.id}/password", json={"password": "a new long password"},
                        headers=alice.headers)
    assert r.status_code == 204, r.text
    assert (await admin.get("/api/v1/whoami", headers=bearer(session))).status_code == 401


async def test_keys_are_shown_once_stored_hashed_and_can_be_disabled_expired_rotated(
    admin: httpx.AsyncClient, settings: GatewaySettings, client: httpx.AsyncClient
) -> None:
    bob = await new_account(admin, "bob", policies=["ReadOnlyAccess"])
    listed = (await admin.get(f"/api/v1/accounts/{bob.id}/keys")).json()
    assert [k["id"] for k in listed] == [bob.key_id] and "token" not in listed[0]
    secret = bob.token.split(".", 2)[2]
    db = b"".join(f.read_bytes() for f in settings.data_dir.glob("identity.db*"))  # with the WAL
    assert secret.encode() not in db and cred.secret_digest(secret).encode() in db
    # disabled, then enabled again
    assert (await admin.patch(f"/api/v1/keys/{bob.key_id}", json={"enabled": False})).status_code == 200
    assert (await admin.get("/api/v1/whoami", headers=bob.headers)).status_code == 401
    assert (await admin.patch(f"/api/v1/keys/{bob.key_id}", json={"enabled": True})).status_code == 200
    assert (await admin.get("/api/v1/whoami", headers=bob.headers)).status_code == 200
    # a second key, then the first deleted: rotation
    second = (await admin.post(f"/api/v1/accounts/{bob.id}/keys", json={"description": "ci"})).json()
    assert (await admin.delete(f"/api/v1/keys/{bob.key_id}")).status_code == 204
    assert (await admin.get("/api/v1/whoami", headers=bob.headers)).status_code == 401
    assert (await admin.get("/api/v1/whoami", headers=bearer(second["token"]))).status_code == 200
    # expired
    store = client._transport.app.state.authenticator.store  # type: ignore[attr-defined]
    with store.engine.begin() as c:
        c.execute(update(api_keys).where(api_keys.c.id == second["id"]).values(expires_at_ms=int(time.time() * 1000) - 1))
    store.version += 1  # as a change by another gateway process is seen once the principal cache (2 s) expires
    assert (await admin.get("/api/v1/whoami", headers=bearer(second["token"]))).status_code == 401
    past = await admin.post(f"/api/v1/accounts/{bob.id}/keys", json={"expires_at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 400


async def test_disabled_and_deleted_accounts_and_tenants_are_refused(admin: httpx.AsyncClient) -> None:
    team = await new_account(admin, "team-a", kind="main")
    sub = await new_account(admin, "team-a-dev", policies=["FullAccess"], as_=team)
    assert (await admin.get("/api/v1/whoami", headers=sub.headers)).json()["account"]["tenant"] == team.id
    assert (await admin.patch(f"/api/v1/accounts/{team.id}", json={"enabled": False})).status_code == 200
    for who in (team, sub):  # a disabled tenant disables its sub-accounts
        assert (await admin.get("/api/v1/whoami", headers=who.headers)).status_code == 401
    assert (await admin.patch(f"/api/v1/accounts/{team.id}", json={"enabled": True})).status_code == 200
    assert (await admin.delete(f"/api/v1/accounts/{sub.id}", headers=team.headers)).status_code == 204
    assert (await admin.get("/api/v1/whoami", headers=sub.headers)).status_code == 401
    # a main account is the operator's to disable or delete, not its own sub-accounts'
    boss = await new_account(admin, "team-a-boss", policies=["FullAccess"], as_=team)
    for r in (await admin.patch(f"/api/v1/accounts/{team.id}", json={"enabled": False}, headers=boss.headers),
              await admin.delete(f"/api/v1/accounts/{team.id}", headers=boss.headers)):
        assert r.status_code == 403
    me = (await admin.get("/api/v1/whoami")).json()["account"]["id"]
    assert (await admin.delete(f"/api/v1/accounts/{me}")).status_code in (403, 409)


async def test_presets_read_only_and_resource_groups(admin: httpx.AsyncClient) -> None:
    ro = await new_account(admin, "reader", policies=["ReadOnlyAccess"])
    rg = await new_account(admin, "rg-admin", policies=["ResourceGroupFullAccess"])
    none = await new_account(admin, "nothing")
    body = {"name": "pool"}
    assert (await admin.get("/api/v1/resource-groups", headers=ro.headers)).status_code == PASSED
    assert (await admin.post("/api/v1/resource-groups", json=body, headers=ro.headers)).status_code == 403
    assert (await admin.post("/api/v1/resource-groups", json=body, headers=rg.headers)).status_code == PASSED
    task = {"name": "t", "resource_group_id": "rsg-1", "command": "true"}
    assert (await admin.post("/api/v1/training-tasks", json=task, headers=rg.headers)).status_code == 403
    assert (await admin.get("/api/v1/training-tasks", headers=rg.headers)).status_code == PASSED
    assert (await admin.get("/api/v1/resource-groups", headers=none.headers)).status_code == 403
    # an account always sees itself and manages its own keys, whatever its policies
    assert (await admin.get(f"/api/v1/accounts/{none.id}", headers=none.headers)).status_code == 200
    assert (await admin.post(f"/api/v1/accounts/{none.id}/keys", json={}, headers=none.headers)).status_code == 201
    # but never its own policies, nor another's keys
    r = await admin.put(f"/api/v1/accounts/{none.id}/policies", json={"policies": ["FullAccess"]}, headers=none.headers)
    assert r.status_code == 403
    assert (await admin.post(f"/api/v1/accounts/{ro.id}/keys", json={}, headers=none.headers)).status_code == 403
    # the operator's resources are the operator tenant's
    tenant = await new_account(admin, "team-b", kind="main")
    for method, path in (("GET", "/api/v1/nodes"), ("GET", "/api/v1/join-tokens"), ("GET", "/api/v1/admin/quarantine")):
        assert (await admin.request(method, path, headers=tenant.headers)).status_code == 403


async def test_custom_policies_wildcards_and_deny_wins(admin: httpx.AsyncClient) -> None:
    doc = {"name": "tasks-not-delete", "statements": [
        {"effect": "allow", "actions": ["trainer:*"]},
        {"effect": "deny", "actions": ["trainer:Delete*", "trainer:Stop*"]},
    ]}
    r = await admin.post("/api/v1/policies", json=doc)
    assert r.status_code == 201, r.text
    policy_id = r.json()["id"]
    dev = await new_account(admin, "dev", policies=[policy_id])
    assert (await admin.get("/api/v1/training-tasks", headers=dev.headers)).status_code == PASSED
    assert (await admin.delete("/api/v1/training-tasks/train-1", headers=dev.headers)).status_code == 403
    assert (await admin.post("/api/v1/training-tasks/train-1/stop", headers=dev.headers)).status_code == 403
    assert (await admin.get("/api/v1/resource-groups", headers=dev.headers)).status_code == 403
    listed = {p["name"] for p in (await admin.get("/api/v1/policies")).json()}
    assert {"FullAccess", "ReadOnlyAccess", "ResourceGroupFullAccess", "tasks-not-delete"} <= listed
    assert (await admin.delete(f"/api/v1/policies/{policy_id}")).status_code == 409  # still attached
    bad = [
        {"name": "x", "statements": [{"effect": "maybe", "actions": ["*"]}]},
        {"name": "x", "statements": [{"effect": "allow", "actions": ["trainer:NoSuchAction"]}]},
        {"name": "x", "statements": []},
        {"name": "FullAccess", "statements": [{"effect": "allow", "actions": ["*"]}]},
    ]
    for body in bad:
        assert (await admin.post("/api/v1/policies", json=body)).status_code in (400, 409), body
    r = await admin.post("/api/v1/accounts", json={"name": "y", "policies": ["NoSuchPolicy"]})
    assert r.status_code == 400


async def test_one_tenant_never_reaches_anothers_accounts_keys_policies(admin: httpx.AsyncClient) -> None:
    a = await new_account(admin, "tenant-a", kind="main")
    b = await new_account(admin, "tenant-b", kind="main")
    a_dev = await new_account(admin, "a-dev", policies=["FullAccess"], as_=a)
    pol = (await admin.post("/api/v1/policies", json={"name": "p", "statements": [
        {"effect": "allow", "actions": ["*"]}]}, headers=a.headers)).json()["id"]
    attempts = [
        ("GET", f"/api/v1/accounts/{a_dev.id}", None), ("PATCH", f"/api/v1/accounts/{a_dev.id}", {"enabled": False}),
        ("DELETE", f"/api/v1/accounts/{a_dev.id}", None),
        ("PUT", f"/api/v1/accounts/{a_dev.id}/password", {"password": "long enough password"}),
        ("PUT", f"/api/v1/accounts/{a_dev.id}/policies", {"policies": []}),
        ("POST", f"/api/v1/accounts/{a_dev.id}/keys", {}), ("GET", f"/api/v1/accounts/{a_dev.id}/keys", None),
        ("PATCH", f"/api/v1/keys/{a_dev.key_id}", {"enabled": False}), ("DELETE", f"/api/v1/keys/{a_dev.key_id}", None),
        ("GET", f"/api/v1/policies/{pol}", None), ("DELETE", f"/api/v1/policies/{pol}", None),
    ]
    for method, path, body in attempts:
        r = await admin.request(method, path, json=body, headers=b.headers)
        assert r.status_code == 404, (method, path, r.text)
    accounts = (await admin.get("/api/v1/accounts", headers=b.headers)).json()
    assert {x["name"] for x in accounts} == {"tenant-b"}
    assert "p" not in {p["name"] for p in (await admin.get("/api/v1/policies", headers=b.headers)).json()}
    r = await admin.post("/api/v1/accounts", json={"name": "new-tenant", "kind": "main"}, headers=b.headers)
    assert r.status_code == 403  # only the operator makes tenants
    assert (await admin.get("/api/v1/whoami", headers=a_dev.headers)).status_code == 200  # untouched


async def test_fields_a_caller_must_not_set_are_refused(admin: httpx.AsyncClient) -> None:
    for body in ({"name": "x", "tenant": "acct-other"}, {"name": "x", "is_operator": True},
                 {"name": "x", "created_by": "someone"}):
        assert (await admin.post("/api/v1/accounts", json=body)).status_code == 400, body
    for body in ({"name": "t", "resource_group_id": "rsg-1", "command": "x", "creator": "mallory"},
                 {"name": "t", "resource_group_id": "rsg-1", "command": "x", "tenant": "acct-other"}):
        assert (await admin.post("/api/v1/training-tasks", json=body)).status_code == 400, body
    r = await admin.post("/api/v1/resource-groups", json={"name": "p", "tenant": "acct-x"})
    assert r.status_code == 400


async def test_audit_records_writes_and_refusals_per_tenant(admin: httpx.AsyncClient) -> None:
    a = await new_account(admin, "tenant-a", kind="main")
    ro = await new_account(admin, "a-reader", policies=["ReadOnlyAccess"], as_=a)
    await admin.post("/api/v1/resource-groups", json={"name": "pool"}, headers=ro.headers)  # refused
    await admin.post("/api/v1/resource-groups", json={"name": "pool"}, headers=a.headers)  # allowed (503)
    mine = (await admin.get("/api/v1/audit", headers=a.headers, params={"action": "scheduler:CreateResourceGroup"})).json()
    assert [(i["account"], i["allowed"]) for i in mine["items"]] == [("a-reader", False), ("tenant-a", True)]
    assert all(i["tenant"] == a.id for i in (await admin.get("/api/v1/audit", headers=a.headers)).json()["items"])
    everything = (await admin.get("/api/v1/audit", params={"account": "a-reader"})).json()["items"]
    assert everything and {i["key_id"] for i in everything} == {ro.key_id}
    assert (await admin.get("/api/v1/audit", headers=ro.headers)).status_code == 200  # reading is ReadOnly's
    assert (await admin.get("/api/v1/audit", params={"since": "yesterday"})).status_code == 400


async def test_auth_disabled_says_so_and_has_no_accounts(
    settings: GatewaySettings, gateway_for: GatewayFactory
) -> None:
    s = settings.model_copy(update={"auth_disabled": True})
    async with gateway_for(create_app(s)) as c:
        r = await c.get("/api/v1/resource-groups")
        assert r.headers["x-capstan-auth"] == "disabled"
        assert (await c.post("/api/v1/login", json={"name": "a", "password": "b"})).status_code == 409


async def test_secrets_never_appear_in_responses_or_logs(
    admin: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, settings: GatewaySettings
) -> None:
    """Canary: a password and keys planted through every identity route; searched in every answer and log."""
    caplog.set_level(logging.DEBUG)
    password = "canary-password-7f3a9c1e"
    acct = await new_account(admin, "canary", password=password, policies=["ReadOnlyAccess"])
    other: Acct = await new_account(admin, "canary-2")
    session = (await admin.post("/api/v1/login", json={"name": "canary", "password": password})).json()["token"]
    secrets = [password, acct.token.split(".", 2)[2], other.token.split(".", 2)[2], session,
               (settings.data_dir / "admin-token").read_text().split(".", 2)[2]]
    bodies = []
    for path in ("/api/v1/accounts", f"/api/v1/accounts/{acct.id}", f"/api/v1/accounts/{acct.id}/keys",
                 "/api/v1/audit", "/api/v1/policies", "/api/v1/whoami", "/openapi.json"):
        for headers in ({}, acct.headers, bearer(session)):
            r = await admin.get(path, headers=headers)
            bodies.append(r.text + str(r.headers))
    for body in ({"name": "canary", "password": password + "x"}, {"name": password, "password": password}):
        r = await admin.post("/api/v1/login", json=body)
        bodies.append(r.text)
    r = await admin.post("/api/v1/accounts", json={"name": "c3", "password": "short"})
    bodies.append(r.text)
    r = await admin.put(f"/api/v1/accounts/{acct.id}/password", json={"password": password[:5]})
    bodies.append(r.text)
    text = "\n".join(bodies) + caplog.text
    assert not [s for s in secrets if s in text]


async def test_no_right_is_gained_through_the_identity_routes(admin: httpx.AsyncClient) -> None:
    """A custom policy allowing the account actions still cannot hand out rights or act as another."""
    r = await admin.post("/api/v1/policies", json={"name": "account-clerk", "statements": [
        {"effect": "allow", "actions": ["gateway:*"]}]})
    clerk = await new_account(admin, "clerk", policies=[r.json()["id"]])
    full = await new_account(admin, "full", policies=["FullAccess"])
    h = clerk.headers
    assert (await admin.post("/api/v1/accounts", json={"name": "x", "policies": ["FullAccess"]}, headers=h)).status_code == 403
    assert (await admin.post("/api/v1/accounts", json={"name": "y", "password": "long enough pw"}, headers=h)).status_code == 403
    assert (await admin.put(f"/api/v1/accounts/{full.id}/policies", json={"policies": []}, headers=h)).status_code == 403
    assert (await admin.put(f"/api/v1/accounts/{full.id}/password", json={"password": "long enough pw"},
                            headers=h)).status_code == 403
    assert (await admin.post(f"/api/v1/accounts/{full.id}/keys", json={}, headers=h)).status_code == 403
    assert (await admin.post("/api/v1/accounts", json={"name": "plain"}, headers=h)).status_code == 201  # no rights given
    # a FullAccess sub-account administers its tenant
    made = await admin.post("/api/v1/accounts", json={"name": "z", "policies": ["ReadOnlyAccess"]}, headers=full.headers)
    assert made.status_code == 201
    assert (await admin.post(f"/api/v1/accounts/{made.json()['id']}/keys", json={}, headers=full.headers)).status_code == 201


async def test_password_guessing_is_cut_short(admin: httpx.AsyncClient) -> None:
    await new_account(admin, "target", password="the right password")
    for _ in range(10):
        r = await admin.post("/api/v1/login", json={"name": "target", "password": "a wrong guess"})
        assert r.status_code == 401
    r = await admin.post("/api/v1/login", json={"name": "target", "password": "the right password"})
    assert r.status_code == 401 and "too many failed logins" in r.json()["error"]["message"]
    for _ in range(11):  # a name that does not exist answers the same
        r = await admin.post("/api/v1/login", json={"name": "nobody-here", "password": "a wrong guess"})
    assert "too many failed logins" in r.json()["error"]["message"]


def test_the_identity_migrations_build_the_tables_the_code_uses(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from capstan_gateway.identity.store import IdentityStore
    from capstan_gateway.identity.tables import metadata

    store = IdentityStore.open(tmp_path)
    with store.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), metadata)
    store.close()
    assert diff == []
