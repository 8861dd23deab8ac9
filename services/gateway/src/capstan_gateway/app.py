"""The app factory: routers, error handlers, middleware; clients and auth built in the lifespan."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from . import errors, invoke
from .auth import build_authenticator
from .clients import Clients
from .middleware import GatewayMiddleware
from .routers import routers
from .settings import GatewaySettings


class Health(BaseModel):
    status: str


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.authenticator = build_authenticator(settings)
        app.state.clients = Clients.connect(settings)
        await invoke.start(app, settings, app.state.clients)
        try:
            yield
        finally:
            await invoke.stop(app)
            await app.state.clients.close()

    app = FastAPI(
        title="Capstan gateway",
        version="0.1.0",
        description="Management API of Capstan. Every /api/v1 route needs `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        **_without_native_tracing(),
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(GatewayMiddleware)
    invoke.mount(app, settings)  # the invocation routes, in front of everything above
    for router in routers():
        app.include_router(router)

    @app.get("/healthz", tags=["health"], summary="Liveness: the gateway process is serving")
    async def healthz() -> Health:
        return Health(status="ok")

    _document_errors_as_400(app)
    return app


def _without_native_tracing() -> dict[str, Any]:
    """Recent FastAPI opens its own SERVER span per request and may install exporters from the
    environment. The gateway's span comes from GatewayMiddleware with the capstan tracer, and
    exporters from capstan_core.tracing only: turn FastAPI's off so a request is one span, not two."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "operation_spans": False, "auto_configure": False}}


def _document_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents validation failures as 422; this gateway answers them as 400 with ErrorBody."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
