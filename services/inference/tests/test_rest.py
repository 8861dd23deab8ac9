"""/api/v1/services through the real gateway, in front of the real inference service and scheduler."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_gateway.app import create_app
from capstan_gateway.settings import GatewaySettings
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_scheduler.service import DEFINITION as SCHEDULER


@pytest.fixture
async def api(tmp_path: Path, nats_server: Any, secrets_dir: Path,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("CAPSTAN_SECRETS_DIR", str(secrets_dir))
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    inf = Service(INFERENCE, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "i", nats_url=nats_server.url,
                                             scheduler_addr=sched.address))
    await inf.start()
    settings = GatewaySettings(data_dir=tmp_path / "gw", scheduler_addr=sched.address, trainer_addr="127.0.0.1:1",
                               inference_addr=inf.address)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                token = (settings.data_dir / "admin-token").read_text()
                c.headers["Authorization"] = f"Bearer {token}"
                yield c
    finally:
        await inf.stop()
        await sched.stop()


async def test_services_over_rest(api: httpx.AsyncClient, nc: Client) -> None:
    rg = (await api.post("/api/v1/resource-groups", json={"name": "serving"})).json()["id"]
    spec = {"runtime": "custom", "command": "python -m http.server 8501", "resource_group_id": rg}
    js = nc.jetstream()

    async def count() -> int:
        return int((await js.stream_info(EVENTS_STREAM)).state.messages)

    before = await count()
    for body, status, words in [
        ({"name": "x", "spec": {**spec, "port": 8502}}, 400, "reserved"),
        ({"name": "x", "spec": {**spec, "grace_period_s": 0}}, 400, "grace_period_s"),
        ({"name": "x", "spec": {**spec, "pre_stop": "sleep 70"}}, 400, "pre_stop"),
        ({"name": "x", "spec": {**spec, "resources": {"cpu": 1, "memory_gib": 1, "gpu_type": "A", "gpu": 0.33}}}, 400, "0.1"),
        ({"name": "x", "spec": {**spec, "resource_group_id": "rsg-none0000"}}, 400, "does not exist"),
        ({"name": "-x", "spec": spec}, 400, "name"),
        ({"name": "x"}, 400, "spec"),
    ]:
        r = await api.post("/api/v1/services", json=body)
        assert r.status_code == status and words in r.text, r.text
    assert await count() == before  # refused commands append nothing

    r = await api.post("/api/v1/services", json={"name": "chat", "generate_key": True, "spec": spec})
    assert r.status_code == 201, r.text
    svc = r.json()
    sid, secret = svc["id"], svc["created_key"]["secret"]
    got = await api.get(f"/api/v1/services/{sid}")
    assert got.status_code == 200 and secret not in got.text and got.json()["auth_enabled"]
    assert secret not in (await api.get(f"/api/v1/services/{sid}/keys")).text
    listed = (await api.get("/api/v1/services", params={"only_mine": True})).json()
    assert [s["id"] for s in listed["items"]] == [sid] and listed["total"] == 1

    k = (await api.post(f"/api/v1/services/{sid}/keys", json={"remark": "b", "tokens_per_day": 10_000})).json()
    assert k["secret"].startswith("sk-")
    off = await api.patch(f"/api/v1/services/{sid}/keys/{k['id']}", json={"enabled": False})
    assert off.status_code == 200 and off.json()["enabled"] is False and "secret" not in off.json()
    assert (await api.delete(f"/api/v1/services/{sid}/keys/{k['id']}")).status_code == 204
    assert (await api.patch(f"/api/v1/services/{sid}", json={"auth_enabled": False})).json()["auth_enabled"] is False

    scaled = await api.post(f"/api/v1/services/{sid}/scale", json={"replicas": 2})
    assert scaled.status_code == 200 and scaled.json()["versions"][0]["replicas"] == 2
    vid = svc["versions"][0]["id"]
    bad = await api.patch(f"/api/v1/services/{sid}/versions/{vid}", json={"spec": {"port": 6006}})
    assert bad.status_code == 400 and "reserved" in bad.text
    upd = await api.patch(f"/api/v1/services/{sid}/versions/{vid}", json={"spec": {"grace_period_s": 60}})
    assert upd.status_code == 200 and upd.json()["versions"][0]["revision"] == 2
    v2 = await api.post(f"/api/v1/services/{sid}/versions", json={"spec": spec, "weight": 10})
    assert v2.status_code == 201 and len(v2.json()["versions"]) == 2
    w = await api.put(f"/api/v1/services/{sid}/weights", json={"weights": {vid: 0, f"{sid}-v2": 0}})
    assert w.status_code == 400 and "weight" in w.text
    w = await api.put(f"/api/v1/services/{sid}/weights", json={"weights": {vid: 90}})
    assert [v["weight"] for v in w.json()["versions"]] == [90, 10]
    a = await api.put(f"/api/v1/services/{sid}/autoscaling", json={"version_id": vid, "autoscaling": {
        "mode": "time", "rules": [{"at": "09:00", "replicas": 3, "except": ["* * * 1-7 10 *"]}], "default": 1}})
    assert a.status_code == 200, a.text
    a = await api.put(f"/api/v1/services/{sid}/autoscaling", json={"version_id": vid, "autoscaling": {
        "mode": "time", "rules": [{"at": "09:00", "replicas": 3, "except": ["* * * 1-7 13 *"]}]}})
    assert a.status_code == 400 and "month" in a.text
    assert (await api.post(f"/api/v1/services/{sid}/instances/{sid}-v1-99/isolate")).status_code == 404
    assert (await api.get("/api/v1/services/ms-00000000")).status_code == 404
    assert (await api.get("/api/v1/services/not-an-id")).status_code == 400
    rec = (await api.get(f"/api/v1/services/{sid}/records")).json()["items"]
    assert {"ServiceCreated", "ServiceVersionScaled", "ServiceVersionUpdated", "ServiceWeightsSet"} <= {x["kind"] for x in rec}
    ev = (await api.get(f"/api/v1/services/{sid}/events")).json()["items"]
    assert any(x["kind"] == "ServiceReplicaAdded" for x in ev)
    rid = (await api.get(f"/api/v1/services/{sid}")).json()["instances"][0]["id"]
    for i, text in enumerate(["loading model", "serving on 8501", "GET /health 200"]):
        body = {"ts_ms": 1_700_000_000_000 + i, "stream": "stdout", "line": text}
        await js.publish(f"capstan.log.{rid}.0", json.dumps(body).encode())
    got = (await api.get(f"/api/v1/services/{sid}/logs", params={"instance": rid, "keyword": "SERVING"})).json()
    assert [(x["instance"], x["line"]) for x in got["lines"]] == [(rid, "serving on 8501")]
    everything = (await api.get(f"/api/v1/services/{sid}/logs")).json()["lines"]
    assert [x["line"] for x in everything] == ["loading model", "serving on 8501", "GET /health 200"]
    assert (await api.get(f"/api/v1/services/{sid}/logs", params={"instance": "a.b"})).status_code == 400
    assert (await api.post(f"/api/v1/services/{sid}/stop")).json()["status"] in ("Stopping", "Stopped")
    assert (await api.post(f"/api/v1/services/{sid}/start")).status_code == 200
    assert (await api.delete(f"/api/v1/services/{sid}")).status_code == 200
