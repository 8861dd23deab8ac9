"""Authentication: bearer token required on /api/v1, the token file, and that no token ever leaks."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from capstan_gateway import GatewaySettings

GatewayFactory = Callable[[GatewaySettings | FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]

ROUTES = [
    ("GET", "/api/v1/resource-groups"),
    ("POST", "/api/v1/resource-groups"),
    ("GET", "/api/v1/resource-groups/rsg-12345678"),
    ("PATCH", "/api/v1/resource-groups/rsg-12345678"),
    ("DELETE", "/api/v1/resource-groups/rsg-12345678"),
    ("GET", "/api/v1/resource-groups/rsg-12345678/queue"),
    ("PUT", "/api/v1/resource-groups/rsg-12345678/shares"),
    ("GET", "/api/v1/nodes"),
    ("POST", "/api/v1/nodes/release"),
    ("POST", "/api/v1/nodes/node-12345678/release"),
    ("DELETE", "/api/v1/nodes/node-12345678"),
    ("GET", "/api/v1/nodes/health-checks"),
    ("GET", "/api/v1/join-tokens"),
    ("POST", "/api/v1/join-tokens"),
    ("DELETE", "/api/v1/join-tokens/jt-12345678"),
    ("GET", "/api/v1/training-tasks"),
    ("POST", "/api/v1/training-tasks"),
    ("POST", "/api/v1/training-tasks/batch"),
    ("GET", "/api/v1/training-tasks/train-12345678"),
    ("POST", "/api/v1/training-tasks/train-12345678/stop"),
    ("GET", "/api/v1/training-tasks/train-12345678/logs"),
    ("POST", "/api/v1/training-tasks/price"),
    ("GET", "/api/v1/images"),
    ("POST", "/api/v1/training-tasks/train-12345678/tensorboard"),
    ("GET", "/api/v1/training-tasks/train-12345678/tensorboard/index.html"),
    ("PATCH", "/api/v1/training-tasks/train-12345678"),
    ("DELETE", "/api/v1/training-tasks/train-12345678"),
    ("POST", "/api/v1/training-tasks/train-12345678/start"),
    ("GET", "/api/v1/training-tasks/train-12345678/copy"),
    ("GET", "/api/v1/training-tasks/train-12345678/outputs"),
    ("GET", "/api/v1/training-tasks/train-12345678/outputs/model/weights.pt"),
    ("GET", "/api/v1/training-tasks/train-12345678/events"),
    ("GET", "/api/v1/training-tasks/train-12345678/metrics"),
    ("GET", "/api/v1/training-tasks/train-12345678/checkpoints"),
    ("GET", "/api/v1/training-tasks/train-12345678/evaluation"),
    ("GET", "/api/v1/admin/quarantine"),
    ("GET", "/api/v1/models"),
    ("POST", "/api/v1/models"),
    ("GET", "/api/v1/models/model-12345678"),
    ("DELETE", "/api/v1/models/model-12345678"),
    ("GET", "/api/v1/models/model-12345678/versions"),
    ("POST", "/api/v1/models/model-12345678/versions"),
    ("GET", "/api/v1/models/model-12345678/versions/1"),
    ("DELETE", "/api/v1/models/model-12345678/versions/1"),
    ("GET", "/api/v1/models/model-12345678/versions/1/files/config.json"),
    # online services (issue #9)
    ("POST", "/api/v1/services"),
    ("GET", "/api/v1/services"),
    ("GET", "/api/v1/services/ms-12345678"),
    ("PATCH", "/api/v1/services/ms-12345678"),
    ("DELETE", "/api/v1/services/ms-12345678"),
    ("POST", "/api/v1/services/ms-12345678/stop"),
    ("POST", "/api/v1/services/ms-12345678/start"),
    ("POST", "/api/v1/services/ms-12345678/versions"),
    ("PATCH", "/api/v1/services/ms-12345678/versions/ms-12345678-v1"),
    ("DELETE", "/api/v1/services/ms-12345678/versions/ms-12345678-v1"),
    ("POST", "/api/v1/services/ms-12345678/scale"),
    ("PUT", "/api/v1/services/ms-12345678/autoscaling"),
    ("PUT", "/api/v1/services/ms-12345678/weights"),
    ("POST", "/api/v1/services/ms-12345678/instances/ms-12345678-v1-1/isolate"),
    ("POST", "/api/v1/services/ms-12345678/instances/ms-12345678-v1-1/unisolate"),
    ("POST", "/api/v1/services/ms-12345678/instances/ms-12345678-v1-1/rebuild"),
    ("GET", "/api/v1/services/ms-12345678/keys"),
    ("POST", "/api/v1/services/ms-12345678/keys"),
    ("PATCH", "/api/v1/services/ms-12345678/keys/key-12345678"),
    ("DELETE", "/api/v1/services/ms-12345678/keys/key-12345678"),
    ("GET", "/api/v1/services/ms-12345678/records"),
    ("GET", "/api/v1/services/ms-12345678/events"),
    ("GET", "/api/v1/services/ms-12345678/logs"),
    ("GET", "/api/v1/services/ms-12345678/metrics"),  # call monitoring (the gateway's invoke package)
    # #8: accounts, keys, policies, audit (POST /api/v1/login is the one public route: see test_accounts)
    ("GET", "/api/v1/whoami"),
    ("POST", "/api/v1/accounts"),
    ("GET", "/api/v1/accounts"),
    ("GET", "/api/v1/accounts/acct-12345678"),
    ("PATCH", "/api/v1/accounts/acct-12345678"),
    ("DELETE", "/api/v1/accounts/acct-12345678"),
    ("PUT", "/api/v1/accounts/acct-12345678/password"),
    ("PUT", "/api/v1/accounts/acct-12345678/policies"),
    ("POST", "/api/v1/accounts/acct-12345678/keys"),
    ("GET", "/api/v1/accounts/acct-12345678/keys"),
    ("PATCH", "/api/v1/keys/key-12345678"),
    ("DELETE", "/api/v1/keys/key-12345678"),
    ("POST", "/api/v1/policies"),
    ("GET", "/api/v1/policies"),
    ("GET", "/api/v1/policies/pol-12345678"),
    ("DELETE", "/api/v1/policies/pol-12345678"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/audit/events"),
    ("GET", "/api/v1/access"),
]
PUBLIC_ROUTES = [("POST", "/api/v1/login")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_api_route_needs_a_token(client: httpx.AsyncClient, method: str, path: str) -> None:
    r = await client.request(method, path, json={})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthenticated"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"


async def test_wrong_token_and_wrong_scheme_are_refused(client: httpx.AsyncClient, admin_token: str) -> None:
    for header in (f"Bearer {admin_token}x", "Bearer nope", f"Basic {admin_token}", admin_token):
        r = await client.get("/api/v1/resource-groups", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.json()["error"]["code"] == "unauthenticated"


async def test_the_admin_token_passes_auth(admin: httpx.AsyncClient) -> None:
    # Past authentication the scheduler is called; it is down here, hence 503 and not 401.
    r = await admin.get("/api/v1/resource-groups")
    assert r.status_code == 503


async def test_healthz_needs_no_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_token_file_is_0600_and_never_echoed(
    client: httpx.AsyncClient, settings: GatewaySettings, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = settings.data_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(admin_token) >= 40  # token_urlsafe(32)
    bodies = []
    for headers in ({}, {"Authorization": f"Bearer {admin_token}"}, {"Authorization": f"Bearer {admin_token}x"}):
        for method, path in [*ROUTES, ("GET", "/nope"), ("GET", "/healthz"), ("GET", "/openapi.json")]:
            r = await client.request(method, path, headers=headers, json={"name": admin_token})
            bodies.append(r.text + str(r.headers))
    assert not [b for b in bodies if admin_token in b]
    assert admin_token not in caplog.text


async def test_token_survives_restart(settings: GatewaySettings, gateway_for: GatewayFactory, admin_token: str) -> None:
    async with gateway_for(settings) as again:
        assert (settings.data_dir / "admin-token").read_text() == admin_token
        r = await again.get("/api/v1/nodes", headers={"Authorization": f"Bearer {admin_token}"})
        assert r.status_code == 503  # authenticated; the scheduler is down


async def test_an_older_installs_token_file_is_replaced_once(
    tmp_path: Path, settings: GatewaySettings, gateway_for: GatewayFactory
) -> None:
    """Before accounts the file held a bare token: the first start with accounts writes the operator's key."""
    settings.data_dir.mkdir(parents=True)
    path = settings.data_dir / "admin-token"
    path.write_text("s3cret-token\n")
    os.chmod(path, 0o644)
    async with gateway_for(settings) as c:
        token = path.read_text()
        assert token.startswith("ck.") and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert (await c.get("/api/v1/whoami", headers={"Authorization": "Bearer s3cret-token"})).status_code == 401
        r = await c.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["account"]["name"] == "admin"
    password = settings.data_dir / "admin-password"
    assert stat.S_IMODE(password.stat().st_mode) == 0o600


async def test_auth_disabled_acts_as_anonymous(
    settings: GatewaySettings, gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings.model_copy(update={"auth_disabled": True})
    with caplog.at_level(logging.WARNING):
        async with gateway_for(s) as c:
            r = await c.get("/api/v1/resource-groups")
            assert r.status_code == 503  # past auth without a token
            assert r.headers["x-capstan-auth"] == "disabled"
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    assert not (s.data_dir / "admin-token").exists()


def test_auth_disabled_refused_beyond_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_AUTH_DISABLED", "true")
    monkeypatch.setenv("CAPSTAN_HTTP_LISTEN", "0.0.0.0:8080")
    monkeypatch.setenv("CAPSTAN_SCHEDULER_ADDR", "127.0.0.1:1")
    monkeypatch.setenv("CAPSTAN_TRAINER_ADDR", "127.0.0.1:2")
    with pytest.raises(ValidationError, match="unauthenticated API beyond this machine"):
        GatewaySettings()
    monkeypatch.setenv("CAPSTAN_HTTP_LISTEN", "127.0.0.1:8080")
    assert GatewaySettings().auth_disabled


def test_service_addresses_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CAPSTAN_SCHEDULER_ADDR", "CAPSTAN_TRAINER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="CAPSTAN_SCHEDULER_ADDR is not set"):
        GatewaySettings()


async def test_the_route_list_above_is_every_api_route(client: httpx.AsyncClient) -> None:
    """A new route must join ROUTES (and so the 401 test): compare with the OpenAPI document."""
    import re

    spec = (await client.get("/openapi.json")).json()
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item if p.startswith("/api/v1")}
    def template(p: str) -> str:
        # online services (issue #9)
        p = re.sub(r"/ms-12345678-v1-1\b", "/{instance_id}", p)
        p = re.sub(r"/ms-12345678-v1\b", "/{version_id}", p)
        p = re.sub(r"/ms-12345678\b", "/{id}", p)
        p = re.sub(r"(/services/\{id\}/keys)/key-12345678\b", r"\1/{key_id}", p)
        p = re.sub(r"/(rsg|train|node|jt|model|acct|key|pol)-12345678", "/{id}", p)
        p = re.sub(r"/outputs/model/weights\.pt$", "/outputs/{path}", p)
        p = re.sub(r"/tensorboard/index\.html$", "/tensorboard/{path}", p)
        return re.sub(r"/files/config\.json$", "/files/{path}", re.sub(r"/versions/1\b", "/versions/{version}", p))

    listed = {(m, template(p)) for m, p in [*ROUTES, *PUBLIC_ROUTES]}
    assert listed == documented
