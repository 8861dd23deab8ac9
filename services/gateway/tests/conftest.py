"""Gateway fixtures: the app served in-process through its lifespan; real services when a test needs them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client

from capstan_core.natsserver import NatsServer, free_port
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import EVENTS_STREAM
from capstan_gateway import GatewaySettings, create_app


def closed_addr() -> str:
    """An address where nothing listens (a free port, not bound)."""
    return f"127.0.0.1:{free_port()}"


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (token file, channels) around an in-process HTTP client."""
    async with app.router.lifespan_context(app):
        # raise_app_exceptions=False: a 500 must come back as the gateway's JSON, like under uvicorn.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


@pytest.fixture(autouse=True)
def _platform_secrets(secrets_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gateway (and service) of these tests holds its certificate from the session's secrets."""
    monkeypatch.setenv("CAPSTAN_SECRETS_DIR", str(secrets_dir))


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    """Settings whose services are unreachable: enough for auth, validation and error tests."""
    return GatewaySettings(data_dir=tmp_path / "gw", scheduler_addr=closed_addr(), trainer_addr=closed_addr())


GatewayFactory = Callable[[GatewaySettings | FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def gateway_for() -> GatewayFactory:
    """``async with gateway_for(settings_or_app) as client`` for tests that need their own gateway."""

    def make(target: GatewaySettings | FastAPI) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return serve(target if isinstance(target, FastAPI) else create_app(target))

    return make


@pytest.fixture
def admin_token(settings: GatewaySettings, client: httpx.AsyncClient) -> str:
    """The token the gateway generated at start (tests may read the file; nothing else shows it)."""
    return (settings.data_dir / "admin-token").read_text()


@pytest.fixture
async def client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """An unauthenticated client of a gateway whose services are down."""
    async with serve(create_app(settings)) as c:
        yield c


@pytest.fixture
async def admin(client: httpx.AsyncClient, admin_token: str) -> httpx.AsyncClient:
    """The same gateway, called with the admin token it generated."""
    client.headers["Authorization"] = f"Bearer {admin_token}"
    return client


@dataclass
class Platform:
    """The real scheduler and trainer services, in this test's event loop, on a real nats-server."""

    scheduler: Service
    trainer: Service
    nats_url: str


@pytest.fixture
async def platform(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Platform]:
    from capstan_scheduler.service import DEFINITION as SCHEDULER
    from capstan_trainer.service import DEFINITION as TRAINER

    scheduler = Service(
        SCHEDULER, ServiceSettings(data_dir=tmp_path / "s", nats_url=nats_server.url, grpc_listen="127.0.0.1:0")
    )
    await scheduler.start()
    trainer = Service(
        TRAINER,
        ServiceSettings(
            data_dir=tmp_path / "t",
            nats_url=nats_server.url,
            grpc_listen="127.0.0.1:0",
            scheduler_addr=scheduler.address,
        ),
    )
    try:
        await trainer.start()
        yield Platform(scheduler, trainer, nats_server.url)
    finally:
        await trainer.stop()
        await scheduler.stop()


@pytest.fixture
def platform_settings(platform: Platform, tmp_path: Path) -> GatewaySettings:
    return GatewaySettings(
        data_dir=tmp_path / "gw", scheduler_addr=platform.scheduler.address, trainer_addr=platform.trainer.address
    )


@pytest.fixture
async def api(platform_settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of a gateway in front of the real scheduler and trainer."""
    async with serve(create_app(platform_settings)) as c:
        token = (platform_settings.data_dir / "admin-token").read_text()
        c.headers["Authorization"] = f"Bearer {token}"
        yield c


@pytest.fixture
async def rg_id(api: httpx.AsyncClient) -> str:
    """A resource group (no nodes) made through the API."""
    r = await api.post("/api/v1/resource-groups", json={"name": "pool"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
async def event_count(nc: Client) -> Callable[[], Awaitable[int]]:
    """How many events CAPSTAN_EVENTS holds now: a refused command must not change it."""
    js = nc.jetstream()

    async def count() -> int:
        return int((await js.stream_info(EVENTS_STREAM)).state.messages)

    return count
