"""Gateway fixtures: the app served in-process through its lifespan; real services when a test needs them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from capstan_core.natsserver import free_port
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
