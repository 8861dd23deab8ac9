"""The proof of #8 on the real scheduler, trainer and registry: every route × every kind of bad
credential, and two tenants (each with sub-accounts) attempting each other's objects through every
route: zero successes. Tenant A's objects are real (a resource group, a training task, a model, its
accounts, keys and policy); every route is called with their ids.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from capstan_core import tracing
from capstan_core.natsserver import NatsServer
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_gateway import GatewaySettings, create_app
from capstan_gateway.identity import credentials as cred
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_registry.service import DEFINITION as REGISTRY

from .accounts_helpers import Acct, new_account
from .conftest import Platform, serve
from .test_auth import PUBLIC_ROUTES, ROUTES

pytestmark = pytest.mark.timeout(600)


@dataclass
class World:
    api: httpx.AsyncClient  # the operator's
    settings: GatewaySettings
    a: Acct  # tenant A's main account
    a_ro: Acct  # A's read-only sub-account
    a_admin: Acct  # A's FullAccess sub-account (its key is disabled, its other account deleted below)
    b: list[Acct]  # tenant B's main account and three sub-accounts (FullAccess, ResourceGroupFullAccess, ReadOnly)
    ids: dict[str, str]  # placeholder in ROUTES -> A's real id


@pytest.fixture
async def world(platform: Platform, nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[World]:
    registry = Service(REGISTRY, ServiceSettings(data_dir=tmp_path / "r", nats_url=nats_server.url,
                                                 grpc_listen="127.0.0.1:0", trainer_addr=platform.trainer.address))
    await registry.start()
    inference = Service(INFERENCE, ServiceSettings(data_dir=tmp_path / "i", nats_url=nats_server.url,
                                                   grpc_listen="127.0.0.1:0", scheduler_addr=platform.scheduler.address,
                                                   registry_addr=registry.address))
    await inference.start()
    settings = GatewaySettings(data_dir=tmp_path / "gw", scheduler_addr=platform.scheduler.address,
                               trainer_addr=platform.trainer.address, registry_addr=registry.address,
                               inference_addr=inference.address, nats_url=nats_server.url)
    try:
        async with serve(create_app(settings)) as api:
            api.headers["Authorization"] = f"Bearer {(settings.data_dir / 'admin-token').read_text()}"
            yield await _seed(api, settings)
    finally:
        await inference.stop()
        await registry.stop()


async def _seed(api: httpx.AsyncClient, settings: GatewaySettings) -> World:
    a = await new_account(api, "tenant-a", kind="main", password="tenant a password")
    b = await new_account(api, "tenant-b", kind="main")
    a_ro = await new_account(api, "a-reader", policies=["ReadOnlyAccess"], as_=a)
    a_admin = await new_account(api, "a-admin", policies=["FullAccess"], as_=a)
    b_subs = [await new_account(api, f"b-{p.lower()}", policies=[p], as_=b)
              for p in ("FullAccess", "ResourceGroupFullAccess", "ReadOnlyAccess")]
    rg = await api.post("/api/v1/resource-groups", json={"name": "a-pool", "tags": {"team": "a"}}, headers=a.headers)
    assert rg.status_code == 201, rg.text
    assert rg.json()["tenant"] == a.id and rg.json()["creator"] == "tenant-a"
    task = await api.post("/api/v1/training-tasks", headers=a_admin.headers,
                          json={"name": "a-task", "resource_group_id": rg.json()["id"], "command": "true"})
    assert task.status_code == 201, task.text
    assert task.json()["tenant"] == a.id and task.json()["creator"] == "a-admin"
    model = await api.post("/api/v1/models", json={"name": "a-model"}, headers=a.headers)
    assert model.status_code == 201, model.text
    pol = await api.post("/api/v1/policies", headers=a.headers,
                         json={"name": "a-policy", "statements": [{"effect": "allow", "actions": ["*"]}]})
    assert pol.status_code == 201, pol.text
    jt = await api.post("/api/v1/join-tokens", json={"resource_group_id": rg.json()["id"]})
    assert jt.status_code == 201, jt.text
    svc = await api.post("/api/v1/services", headers=a.headers, json={"name": "a-service", "spec": {
        "runtime": "custom", "command": "python3 -m http.server 8501", "resource_group_id": rg.json()["id"]}})
    assert svc.status_code == 201, svc.text
    assert svc.json()["tenant"] == a.id and svc.json()["creator"] == "tenant-a"
    ids = {"rsg-12345678": rg.json()["id"], "train-12345678": task.json()["id"], "model-12345678": model.json()["id"],
           "acct-12345678": a_admin.id, "key-12345678": a_admin.key_id, "pol-12345678": pol.json()["id"],
           "jt-12345678": jt.json()["id"], "node-12345678": "node-12345678", "ms-12345678": svc.json()["id"]}
    return World(api, settings, a, a_ro, a_admin, [b, *b_subs], ids)


def _path(w: World, path: str) -> str:
    for placeholder, real in w.ids.items():
        path = path.replace(placeholder, real)
    return path


def _body(w: World) -> dict[str, Any]:
    """One body for every route: valid where it can be, and naming A's objects wherever a body may."""
    rg, task = w.ids["rsg-12345678"], w.ids["train-12345678"]
    return {"name": "x-attack", "resource_group_id": rg, "command": "true", "task_id": task, "enabled": False,
            "items": [{"name": "x", "resource_group_id": rg, "command": "true"}], "node_ids": ["node-12345678"],
            "password": "a long enough password", "policies": [], "tenants": ["acct-mallory"]}


def _a_ids(w: World) -> list[str]:
    return [v for k, v in w.ids.items() if k != "node-12345678"] + ["a-pool", "a-task", "a-model", "a-policy",
                                                                    "a-service"]


async def _snapshot(w: World) -> str:
    """What the operator sees of A's objects: must be the same after every attack."""
    parts = []
    for path in (f"/api/v1/resource-groups/{w.ids['rsg-12345678']}", f"/api/v1/training-tasks/{w.ids['train-12345678']}",
                 f"/api/v1/models/{w.ids['model-12345678']}", f"/api/v1/accounts/{w.a_admin.id}",
                 f"/api/v1/accounts/{w.a_admin.id}/keys", f"/api/v1/policies/{w.ids['pol-12345678']}",
                 "/api/v1/join-tokens", f"/api/v1/services/{w.ids['ms-12345678']}",
                 f"/api/v1/services/{w.ids['ms-12345678']}/keys"):
        r = await w.api.get(path)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        if isinstance(body, dict):
            for volatile in ("status", "queue", "instances", "queued_at", "started_at", "position", "price",
                             "state_reason", "running_replicas", "running_versions", "expected_replicas"):
                body.pop(volatile, None)
        parts.append(json.dumps(body, sort_keys=True))
    return "\n".join(parts)


async def _bad_credentials(w: World) -> dict[str, dict[str, str]]:
    """Every kind of credential that must get nowhere, on every route (A's own objects)."""
    api = w.api
    # a second key of A's admin, disabled
    k = (await api.post(f"/api/v1/accounts/{w.a_admin.id}/keys", json={})).json()
    assert (await api.patch(f"/api/v1/keys/{k['id']}", json={"enabled": False})).status_code == 200
    # an account of A, deleted (its key kept by the attacker)
    gone = await new_account(api, "a-gone", policies=["FullAccess"], as_=w.a)
    assert (await api.delete(f"/api/v1/accounts/{gone.id}")).status_code == 204
    session_key = (w.settings.data_dir / "session-key").read_bytes()
    expired = cred.session_token(session_key, w.a.id, int(time.time() * 1000) - 1000, 0)
    wrong = f"ck.{w.a.key_id}.{'x' * 43}"
    return {
        "no credentials": {"Authorization": ""},
        "malformed": {"Authorization": "Bearer ck.."},
        "malformed scheme": {"Authorization": f"Basic {w.a.token}"},
        "wrong secret": {"Authorization": f"Bearer {wrong}"},
        "expired session": {"Authorization": f"Bearer {expired}"},
        "disabled key": {"Authorization": f"Bearer {k['token']}"},
        "deleted account": gone.headers,
    }


async def test_every_route_refuses_every_bad_credential(world: World) -> None:
    w = world
    creds = await _bad_credentials(w)
    before = await _snapshot(w)
    successes = []
    for label, headers in creds.items():
        for method, path in ROUTES:
            r = await w.api.request(method, _path(w, path), json=_body(w), headers=headers)
            if r.status_code != 401:
                successes.append((label, method, path, r.status_code))
    assert not successes
    assert await _snapshot(w) == before


async def test_a_read_only_sub_account_writes_nothing(world: World) -> None:
    w = world
    before = await _snapshot(w)
    wrote = []
    for method, path in ROUTES:
        if method == "GET" or path == "/api/v1/training-tasks/price":  # reads (the price: a read on no object)
            continue
        r = await w.api.request(method, _path(w, path), json=_body(w), headers=w.a_ro.headers)
        if r.status_code not in (403,) and not (path == "/api/v1/training-tasks/price" and r.status_code == 200):
            wrote.append((method, path, r.status_code))
    assert not wrote
    assert await _snapshot(w) == before


async def test_another_tenant_and_its_sub_accounts_never_reach_a_tenants_objects(world: World) -> None:
    """B's main account and three sub-accounts (FullAccess, ResourceGroupFullAccess, ReadOnly) through every
    route with A's ids: 401/403/404, or an answer about B's own objects that names none of A's."""
    w = world
    before = await _snapshot(w)
    leaks = []
    for who in w.b:
        for method, path in ROUTES:
            r = await w.api.request(method, _path(w, path), json=_body(w), headers=who.headers)
            if r.status_code in (401, 403, 404) or (r.status_code == 400 and method == "POST"):
                continue  # refused (a create naming A's group: "does not exist")
            if path == "/api/v1/audit":  # B's own records of its own attempts (the ids it sent), none of A's
                assert r.status_code == 200 and {i["tenant"] for i in r.json()["items"]} == {w.b[0].id}
                continue
            named = [i for i in _a_ids(w) if i in r.text]
            if r.status_code >= 500 or named or "{id}" in path or "12345678" in path:
                leaks.append((who.name, method, path, r.status_code, named))
    assert not leaks
    assert await _snapshot(w) == before
    # and what B made is B's: its own group, invisible to A
    mine = (await w.api.get("/api/v1/resource-groups", headers=w.b[0].headers)).json()["items"]
    assert {g["tenant"] for g in mine} <= {w.b[0].id}
    theirs = (await w.api.get("/api/v1/resource-groups", headers=w.a.headers)).json()["items"]
    assert [g["name"] for g in theirs] == ["a-pool"]


async def test_lists_and_only_mine_are_per_tenant(world: World) -> None:
    w = world
    for who in w.b:
        for path in ("/api/v1/training-tasks", "/api/v1/resource-groups", "/api/v1/models", "/api/v1/accounts"):
            r = await w.api.get(path, headers=who.headers)
            if r.status_code == 200:
                assert not [i for i in _a_ids(w) if i in r.text], (who.name, path)
    tasks = (await w.api.get("/api/v1/training-tasks", headers=w.a_ro.headers)).json()
    assert [t["name"] for t in tasks["items"]] == ["a-task"]  # A's reader sees A's task
    mine = (await w.api.get("/api/v1/training-tasks", params={"only_mine": "true"}, headers=w.a.headers)).json()
    assert mine["items"] == []  # A's task was created by a-admin
    theirs = (await w.api.get("/api/v1/training-tasks", params={"only_mine": "true"}, headers=w.a_admin.headers)).json()
    assert [t["name"] for t in theirs["items"]] == ["a-task"]
    everyone = (await w.api.get("/api/v1/training-tasks")).json()  # the operator sees every tenant's
    assert "a-task" in [t["name"] for t in everyone["items"]]


async def test_a_shared_resource_group_is_usable_not_editable_by_the_other_tenant(world: World) -> None:
    w = world
    rg = w.ids["rsg-12345678"]
    b = w.b[0]
    task = {"name": "b-task", "resource_group_id": rg, "command": "true"}
    assert (await w.api.post("/api/v1/training-tasks", json=task, headers=b.headers)).status_code == 400
    share = await w.api.put(f"/api/v1/resource-groups/{rg}/shares", json={"tenants": [b.id]}, headers=w.a.headers)
    assert share.status_code == 403  # the operator's
    share = await w.api.put(f"/api/v1/resource-groups/{rg}/shares", json={"tenants": [b.id]})
    assert share.status_code == 200 and share.json()["shared_with"] == [b.id]
    assert (await w.api.get(f"/api/v1/resource-groups/{rg}", headers=b.headers)).status_code == 200
    r = await w.api.post("/api/v1/training-tasks", json=task, headers=b.headers)
    assert r.status_code == 201, r.text
    assert r.json()["tenant"] == b.id
    assert (await w.api.patch(f"/api/v1/resource-groups/{rg}", json={"name": "mine"}, headers=b.headers)).status_code == 404
    assert (await w.api.delete(f"/api/v1/resource-groups/{rg}", headers=b.headers)).status_code == 404
    # A does not see B's task in A's own group's task list
    a_tasks = (await w.api.get("/api/v1/training-tasks", headers=w.a.headers)).json()["items"]
    assert [t["name"] for t in a_tasks] == ["a-task"]


async def test_login_is_the_only_public_route(world: World) -> None:
    assert PUBLIC_ROUTES == [("POST", "/api/v1/login")]
    r = await world.api.post("/api/v1/login", json={"name": "tenant-a", "password": "tenant a password"},
                             headers={"Authorization": ""})
    assert r.status_code == 200
    session = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await world.api.get("/api/v1/models", headers=session)).json()["items"][0]["name"] == "a-model"


async def test_canary_secrets_appear_nowhere(
    world: World, nc: Client, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Passwords, API keys, session tokens and a git password, planted through the routes that take them
    (and wrong, in bodies and headers, where they do not belong), then searched in every answer, the log,
    every span and every event of the log."""
    caplog.set_level(logging.DEBUG)
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("canary", exporter=exporter)
    w = world
    password = "canary-pw-" + secrets.token_hex(8)
    git_password = "canary-git-" + secrets.token_hex(8)
    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / "storage.json").write_text(json.dumps(
        {"git_credentials": {"bot": {"username": "bot", "password": git_password}}}))
    carol = await new_account(w.api, "carol", password=password, policies=["FullAccess"], as_=w.a)
    session = (await w.api.post("/api/v1/login", json={"name": "carol", "password": password})).json()["token"]
    canaries = [password, git_password, session, carol.token.split(".", 2)[2], w.a.token.split(".", 2)[2],
                (w.settings.data_dir / "admin-token").read_text().split(".", 2)[2]]
    answers = []
    rg = w.ids["rsg-12345678"]
    task = {"name": "canary", "resource_group_id": rg, "command": f"echo {password[:4]}",
            "storage": [{"kind": "git", "purpose": "code", "source": "https://example.invalid/x.git", "path": "/code",
                         "credential": "bot"}]}
    calls: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/api/v1/training-tasks", task, carol.headers),
        ("POST", "/api/v1/login", {"name": "carol", "password": password + "x"}, {}),
        ("POST", "/api/v1/login", {"name": password, "password": password}, {}),
        ("PUT", f"/api/v1/accounts/{carol.id}/password", {"password": password[:6]}, carol.headers),
        ("POST", "/api/v1/accounts", {"name": "dave", "password": password, "bogus": password}, carol.headers),
        ("GET", "/api/v1/whoami", None, {"Authorization": f"Bearer {carol.token}x"}),
        ("GET", "/api/v1/whoami", None, {"Authorization": f"Bearer {session}x"}),
    ]
    for path in ("/api/v1/accounts", f"/api/v1/accounts/{carol.id}", f"/api/v1/accounts/{carol.id}/keys",
                 "/api/v1/audit", "/api/v1/training-tasks", "/api/v1/whoami", "/api/v1/policies", "/openapi.json"):
        for headers in (carol.headers, {"Authorization": f"Bearer {session}"}, {}):
            calls.append(("GET", path, None, headers))
    for method, path, body, headers in calls:
        r = await w.api.request(method, path, json=body, headers=headers)
        answers.append(f"{method} {path} {r.status_code} {r.text} {dict(r.headers)}")
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    events = [(await js.get_msg(EVENTS_STREAM, seq)).data.decode(errors="replace")
              for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    spans = [json.dumps({"name": s.name, "attributes": dict(s.attributes or {}),
                         "events": [dict(e.attributes or {}) for e in s.events]}, default=str)
             for s in exporter.get_finished_spans()]
    exporter.shutdown()
    assert events and spans and answers
    haystacks = {"answers": "\n".join(answers), "log": caplog.text, "events": "\n".join(events), "spans": "\n".join(spans)}
    found = {(where, c[:12]) for where, text in haystacks.items() for c in canaries if c in text}
    assert not found


async def test_rights_by_tag(world: World) -> None:
    """A policy granting rights only on objects carrying a tag: the tagged group yes, an untagged one no."""
    w = world
    other = await w.api.post("/api/v1/resource-groups", json={"name": "a-untagged"}, headers=w.a.headers)
    assert other.status_code == 201, other.text
    doc = {"name": "team-a-groups", "statements": [
        {"effect": "allow", "actions": ["scheduler:GetResourceGroup", "scheduler:UpdateResourceGroup"],
         "resources": ["rsg:*"], "tags": {"team": "a"}},
        {"effect": "deny", "actions": ["scheduler:UpdateResourceGroup"], "tags": {"frozen": "yes"}}]}
    pol = await w.api.post("/api/v1/policies", json=doc, headers=w.a.headers)
    assert pol.status_code == 201, pol.text
    dev = await new_account(w.api, "a-tagged-dev", policies=[pol.json()["id"]], as_=w.a)
    tagged = w.ids["rsg-12345678"]
    assert (await w.api.get(f"/api/v1/resource-groups/{tagged}", headers=dev.headers)).status_code == 200
    assert (await w.api.get(f"/api/v1/resource-groups/{other.json()['id']}", headers=dev.headers)).status_code == 403
    assert (await w.api.get("/api/v1/resource-groups", headers=dev.headers)).status_code == 403  # no object: no tag
    r = await w.api.patch(f"/api/v1/resource-groups/{tagged}", json={"tags": {"team": "a", "frozen": "yes"}},
                          headers=dev.headers)
    assert r.status_code == 200, r.text
    r = await w.api.patch(f"/api/v1/resource-groups/{tagged}", json={"description": "x"}, headers=dev.headers)
    assert r.status_code == 403  # now frozen: the deny wins


async def test_every_event_carries_who_acted(world: World, nc: Client) -> None:
    """The event log is the audit trail: each commit's "by" is the acting principal (never a secret)."""
    w = world
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    commits = [json.loads((await js.get_msg(EVENTS_STREAM, seq)).data)
               for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    assert all("by" in c for c in commits)
    submitted = [c for c in commits if any(e["type"] == "TrainingTaskSubmitted" and e["data"]["task_id"] ==
                                           w.ids["train-12345678"] for e in c["events"])]
    assert [c["by"] for c in submitted] == [{"account": "a-admin", "tenant": w.a.id, "key_id": w.a_admin.key_id,
                                             "source": "key", "is_operator": False}]
    created = [c for c in commits if any(e["type"] == "ResourceGroupCreated" for e in c["events"])]
    assert created[0]["by"]["account"] == "tenant-a" and created[0]["events"][0]["data"]["tenant"] == w.a.id


async def test_who_can_do_what_on_an_object(world: World) -> None:
    w = world
    obj = f"rsg:{w.ids['rsg-12345678']}"
    r = await w.api.get("/api/v1/access", params={"object": obj}, headers=w.a.headers)
    assert r.status_code == 200, r.text
    by_name = {a["name"]: set(a["actions"]) for a in r.json()["accounts"]}
    assert "scheduler:UpdateResourceGroup" in by_name["tenant-a"] and "scheduler:UpdateResourceGroup" in by_name["a-admin"]
    assert by_name["a-reader"] == {"scheduler:GetResourceGroup", "scheduler:ListResourceGroups", "scheduler:GetQueue"}
    assert not {"tenant-b", "b-fullaccess"} & set(by_name)
    assert (await w.api.get("/api/v1/access", params={"object": obj}, headers=w.b[0].headers)).status_code == 404
    assert (await w.api.get("/api/v1/access", params={"object": "nonsense"}, headers=w.a.headers)).status_code == 400


async def test_the_event_log_is_queried_as_the_audit_trail(world: World) -> None:
    w = world
    obj = f"train:{w.ids['train-12345678']}"
    mine = (await w.api.get("/api/v1/audit/events", params={"object": obj}, headers=w.a_ro.headers)).json()
    submitted = [c for c in mine["items"] if "TrainingTaskSubmitted" in c["event_types"]]
    assert [c["by"]["account"] for c in submitted] == ["a-admin"]
    assert submitted[0]["by"]["key_id"] == w.a_admin.key_id and submitted[0]["subject"].endswith(w.ids["train-12345678"])
    assert all(c["by"].get("tenant") == w.a.id for c in mine["items"])  # a tenant sees its own actors' commits
    theirs = (await w.api.get("/api/v1/audit/events", params={"object": obj}, headers=w.b[0].headers)).json()
    assert theirs["items"] == []
    by_account = (await w.api.get("/api/v1/audit/events", params={"account": "tenant-a"})).json()["items"]
    assert by_account and {c["by"]["account"] for c in by_account} == {"tenant-a"}
    typed = (await w.api.get("/api/v1/audit/events", params={"event_type": "ResourceGroupCreated"})).json()["items"]
    assert [c["by"]["account"] for c in typed] == ["tenant-a"]
    later = (await w.api.get("/api/v1/audit/events", params={"since": "2100-01-01T00:00:00Z"})).json()
    assert later["items"] == [] and later["next_after_seq"] == 0
    assert (await w.api.get("/api/v1/audit/events", params={"object": "train:a b"})).status_code == 400


async def test_a_service_deploys_only_into_the_tenants_own_or_shared_groups(world: World) -> None:
    w = world
    rg = w.ids["rsg-12345678"]
    spec = {"runtime": "custom", "command": "python3 -m http.server 8501", "resource_group_id": rg}
    for who in w.b[:2]:  # B's main account and its FullAccess sub-account: A's group does not exist for them
        r = await w.api.post("/api/v1/services", json={"name": "b-service", "spec": spec}, headers=who.headers)
        assert r.status_code == 400 and "does not exist" in r.text and "b-service" not in r.text, r.text
    shared = await w.api.put(f"/api/v1/resource-groups/{rg}/shares", json={"tenants": [w.b[0].id]})
    assert shared.status_code == 200, shared.text
    r = await w.api.post("/api/v1/services", json={"name": "b-service", "spec": spec}, headers=w.b[0].headers)
    assert r.status_code == 201 and r.json()["tenant"] == w.b[0].id, r.text
    mine = (await w.api.get("/api/v1/services", headers=w.a.headers)).json()["items"]
    assert [s["name"] for s in mine] == ["a-service"]  # B's service, in A's shared group, is still B's


async def test_group_and_model_names_are_unique_per_tenant(world: World, event_count) -> None:  # type: ignore[no-untyped-def]
    """Two tenants each make a group and a model of the same names; each sees its own; a second of a name
    within one tenant is still refused (409, naming the field), appending nothing; another tenant's name
    is never told (B's creates succeed, they do not say A has one)."""
    w = world
    b = w.b[0]
    a_rg, a_model = w.ids["rsg-12345678"], w.ids["model-12345678"]
    rg = await w.api.post("/api/v1/resource-groups", json={"name": "a-pool"}, headers=b.headers)
    assert rg.status_code == 201 and rg.json()["tenant"] == b.id and rg.json()["id"] != a_rg, rg.text
    model = await w.api.post("/api/v1/models", json={"name": "a-model"}, headers=b.headers)
    assert model.status_code == 201 and model.json()["tenant"] == b.id and model.json()["id"] != a_model, model.text
    for who, rg_id, model_id in ((w.a, a_rg, a_model), (b, rg.json()["id"], model.json()["id"])):
        groups = (await w.api.get("/api/v1/resource-groups", headers=who.headers)).json()["items"]
        assert [(g["id"], g["name"]) for g in groups] == [(rg_id, "a-pool")]
        models = (await w.api.get("/api/v1/models", headers=who.headers)).json()["items"]
        assert [(m["id"], m["name"]) for m in models] == [(model_id, "a-model")]
        by_name = await w.api.get("/api/v1/models/a-model", headers=who.headers)  # a name means the tenant's own
        assert by_name.status_code == 200 and by_name.json()["id"] == model_id, by_name.text
    # within one tenant a name is still taken: a create, and a rename onto it
    before = await event_count()
    for who in (w.a, b):
        r = await w.api.post("/api/v1/resource-groups", json={"name": "a-pool"}, headers=who.headers)
        assert r.status_code == 409 and "named 'a-pool' already exists" in r.text, r.text
        r = await w.api.post("/api/v1/models", json={"name": "a-model"}, headers=who.headers)
        assert r.status_code == 409 and "named 'a-model' already exists" in r.text, r.text
    assert await event_count() == before
    other = await w.api.post("/api/v1/resource-groups", json={"name": "b-other"}, headers=b.headers)
    assert other.status_code == 201, other.text
    before = await event_count()
    r = await w.api.patch(f"/api/v1/resource-groups/{other.json()['id']}", json={"name": "a-pool"}, headers=b.headers)
    assert r.status_code == 409 and rg.json()["id"] in r.text and a_rg not in r.text, r.text
    assert await event_count() == before
    # ... but a rename onto another tenant's name is not refused
    r = await w.api.patch(f"/api/v1/resource-groups/{other.json()['id']}", json={"name": "a-untagged"}, headers=b.headers)
    assert r.status_code == 200, r.text
    assert (await w.api.post("/api/v1/resource-groups", json={"name": "a-untagged"}, headers=w.a.headers)).status_code == 201
    # the operator sees both; a name several tenants use is its own when it has one, else it must give the id
    everyone = (await w.api.get("/api/v1/models")).json()["items"]
    assert sorted(m["tenant"] for m in everyone if m["name"] == "a-model") == sorted([w.a.id, b.id])
    r = await w.api.get("/api/v1/models/a-model")
    assert r.status_code == 400 and "several tenants" in r.text and a_model in r.text, r.text
    mine = await w.api.post("/api/v1/models", json={"name": "a-model"})
    assert mine.status_code == 201, mine.text
    r = await w.api.get("/api/v1/models/a-model")
    assert r.status_code == 200 and r.json()["id"] == mine.json()["id"], r.text
    # a service's registry model source is looked up in the caller's tenant: by name its own, by id never A's
    spec = {"runtime": "transformers", "command": "", "resource_group_id": rg.json()["id"]}
    r = await w.api.post("/api/v1/services", headers=b.headers, json={"name": "b-svc", "spec": {
        **spec, "model": {"kind": "registry", "model_id": "a-model"}}})
    assert r.status_code == 400 and "has no version yet" in r.text, r.text  # B's own model (no version)
    r = await w.api.post("/api/v1/services", headers=b.headers, json={"name": "b-svc", "spec": {
        **spec, "model": {"kind": "registry", "model_id": a_model}}})
    assert r.status_code == 400 and "does not exist" in r.text, r.text


async def test_a_shared_groups_queue_shows_other_tenants_work_only_anonymously(
    world: World, platform: Platform
) -> None:
    from capstan_core.testing import admin_channel
    from capstan_proto import scheduler_pb2, scheduler_pb2_grpc

    w = world
    rg = w.ids["rsg-12345678"]
    b = w.b[0]
    assert (await w.api.put(f"/api/v1/resource-groups/{rg}/shares", json={"tenants": [b.id]})).status_code == 200
    async with admin_channel(platform.scheduler.address, "scheduler", platform.scheduler.settings.secrets_path) as ch:
        await scheduler_pb2_grpc.SchedulerStub(ch).JoinNode(scheduler_pb2.JoinNodeRequest(
            resource_group_id=rg, name="n1", cpu=5, memory_gib=64, agent_kind="trainer"))  # A's seeded task: 1 CPU
    big = {"resource_group_id": rg, "command": "x", "resources": {"cpu": 4, "memory_gib": 1}}
    tasks = {}
    for who, name in ((w.a, "a-first"), (b, "b-secret-task"), (w.a, "a-second")):
        r = await w.api.post("/api/v1/training-tasks", json={"name": name, **big}, headers=who.headers)
        assert r.status_code == 201, r.text
        tasks[name] = r.json()["id"]
        if name == "a-first":
            for _ in range(100):
                view = (await w.api.get(f"/api/v1/resource-groups/{rg}/queue")).json()
                if any(tasks["a-first"] in n["workloads"] for n in view["nodes"]):
                    break
                await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    everything = (await w.api.get(f"/api/v1/resource-groups/{rg}/queue")).json()  # the operator: everything
    queued = {i["workload_id"] for i in everything["items"]}
    assert {tasks["b-secret-task"], tasks["a-second"]} <= queued
    assert not any(i["other_tenant"] for i in everything["items"])
    running = {x for n in everything["nodes"] for x in n["workloads"]}
    assert tasks["a-first"] in running

    for who, own, foreign in ((w.a, {"a-first", "a-second"}, {"b-secret-task"}),
                              (b, {"b-secret-task"}, {"a-first", "a-second"})):
        r = await w.api.get(f"/api/v1/resource-groups/{rg}/queue", headers=who.headers)
        assert r.status_code == 200, r.text
        view = r.json()
        for name in foreign:
            assert tasks[name] not in r.text and name not in r.text
        mine = [i for i in view["items"] if not i["other_tenant"]]
        theirs = [i for i in view["items"] if i["other_tenant"]]
        b_ids = {tasks["b-secret-task"]}
        assert {i["workload_id"] for i in mine} == (queued - b_ids if who is w.a else b_ids)  # A's: also its service
        assert theirs and all(i["workload_id"] == "" and i["kind"] == "" and i["submitted_at"] is None
                              and i["position"] >= 1 and i["priority"].startswith("P") for i in theirs)
        assert len(view["items"]) == len(everything["items"])  # the positions of everyone's work are kept
        board = {x for n in view["nodes"] for x in n["workloads"]}
        assert board == (running if who is w.a else set())  # all that runs is A's
        assert sum(n["other_tenant_workloads"] for n in view["nodes"]) == (0 if who is w.a else len(running))


async def test_identity_changes_are_events_of_the_log(world: World, nc: Client) -> None:
    """Accounts and keys created, disabled, deleted, policies attached and detached, a password set: each an
    event of the log with who acted (`GET /api/v1/audit/events`), never a secret; another tenant sees none."""
    w = world
    password = "canary-pw-" + secrets.token_hex(8)
    r = await w.api.post("/api/v1/accounts", headers=w.a.headers,
                         json={"name": "a-events", "password": password, "policies": ["ReadOnlyAccess"]})
    assert r.status_code == 201, r.text
    acct = r.json()["id"]
    key = await w.api.post(f"/api/v1/accounts/{acct}/keys", json={}, headers=w.a.headers)
    assert key.status_code == 201, key.text
    key_id, token = key.json()["id"], key.json()["token"]
    steps = [("PUT", f"/api/v1/accounts/{acct}/policies", {"policies": ["FullAccess"]}),
             ("PUT", f"/api/v1/accounts/{acct}/password", {"password": password + "-2"}),
             ("PATCH", f"/api/v1/keys/{key_id}", {"enabled": False}),
             ("PATCH", f"/api/v1/keys/{key_id}", {"description": "no event: not an identity change"}),
             ("PATCH", f"/api/v1/accounts/{acct}", {"enabled": False}),
             ("DELETE", f"/api/v1/accounts/{acct}", None)]
    for method, path, body in steps:
        r = await w.api.request(method, path, json=body, headers=w.a.headers)
        assert r.status_code in (200, 204), (path, r.text)
    refused = await w.api.patch(f"/api/v1/keys/{key_id}", json={"enabled": True}, headers=w.a.headers)
    assert refused.status_code == 404  # gone with its account: nothing recorded for it
    pol = await w.api.post("/api/v1/policies", headers=w.a.headers, json={"name": "a-events-policy", "statements": [
        {"effect": "allow", "actions": ["trainer:*"]}]})
    assert pol.status_code == 201, pol.text
    assert (await w.api.delete(f"/api/v1/policies/{pol.json()['id']}", headers=w.a.headers)).status_code == 204
    bad = await w.api.post("/api/v1/policies", headers=w.a.headers, json={"name": "a-events-policy", "statements": [
        {"effect": "maybe", "actions": ["trainer:*"]}]})
    assert bad.status_code == 400  # refused: nothing recorded

    async def commits(obj: str, who: dict[str, str] | None = None) -> list[dict[str, Any]]:
        r = await w.api.get("/api/v1/audit/events", params={"object": obj}, headers=who or {})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])

    want_account = [["AccountCreated"], ["AccountPoliciesChanged"], ["PasswordChanged"], ["AccountDisabled"],
                    ["AccountDeleted"]]
    for _ in range(100):  # appended from the store's outbox just after each change, in order
        if len(await commits(f"policy:{pol.json()['id']}")) == 2:  # the last change
            break
        await asyncio.sleep(0.05)
    on_account = await commits(f"account:{acct}", w.a.headers)  # A sees its own actors' commits
    assert [c["event_types"] for c in on_account] == want_account
    assert {c["by"]["account"] for c in on_account} == {"tenant-a"}
    assert all(c["by"]["tenant"] == w.a.id and c["by"]["key_id"] == w.a.key_id for c in on_account)
    on_key = await commits(f"key:{key_id}", w.a.headers)
    assert [c["event_types"] for c in on_key] == [["KeyCreated"], ["KeyDisabled"], ["KeyDeleted"]]
    on_policy = await commits(f"policy:{pol.json()['id']}", w.a.headers)
    assert [c["event_types"] for c in on_policy] == [["PolicyCreated"], ["PolicyDeleted"]]
    assert await commits(f"account:{acct}", w.b[0].headers) == []  # another tenant: none of it
    typed = [c for c in (await w.api.get("/api/v1/audit/events", params={"event_type": "AccountCreated"})).json()["items"]
             if c["subject"].endswith(acct)]
    assert len(typed) == 1
    # what the events say: ids, names, policies; never a password, its hash or a key's secret
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    raw = [(await js.get_msg(EVENTS_STREAM, seq)).data.decode() for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    mine = [json.loads(m) for m in raw if acct in m]
    policies = [e["data"] for c in mine for e in c["events"] if e["type"] == "AccountPoliciesChanged"]
    assert policies == [{"account_id": acct, "tenant": w.a.id, "attached": ["FullAccess"], "detached": ["ReadOnlyAccess"],
                         "policies": ["FullAccess"], "at_ms": policies[0]["at_ms"]}]
    text = "\n".join(raw)
    for secret in (password, token.split(".", 2)[2], "$argon2"):
        assert secret not in text
    assert w.settings.data_dir.exists() and not (await asyncio.to_thread(_outbox_rows, w))


def _outbox_rows(w: World) -> int:
    import sqlite3

    with sqlite3.connect(w.settings.data_dir / "identity.db") as db:
        return int(db.execute("select count(*) from identity_outbox").fetchone()[0])
