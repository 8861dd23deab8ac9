"""The app factory: routers, error handlers, middleware; clients and auth built in the lifespan."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from capstan_core import actions

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
        store = app.state.authenticator.store
        app.state.identity_events = None
        if store is not None and store.record_events:  # identity changes into the event log (#8)
            from .identity.events import IdentityEventPublisher

            app.state.identity_events = await IdentityEventPublisher.start(store, settings)
        app.state.clients = Clients.connect(settings)
        await invoke.start(app, settings, app.state.clients)
        try:
            yield
        finally:
            await invoke.stop(app)
            if app.state.identity_events is not None:
                await app.state.identity_events.stop()
            await app.state.clients.close()
            if app.state.authenticator.store is not None:
                app.state.authenticator.store.close()

    app = FastAPI(
        title="Capstan gateway",
        version="0.1.0",
        description="Management API of Capstan. Every /api/v1 route but /login needs `Authorization: Bearer "
        "<token>` (an API key or a session); each operation names the action policies speak of "
        "(`x-capstan-action`).",
        lifespan=lifespan,
        **_without_native_tracing(),
    )
    app.state.settings = settings
    errors.install(app)
    app.add_middleware(GatewayMiddleware, auth_disabled=settings.auth_disabled)
    invoke.mount(app, settings)  # the invocation routes, in front of everything above
    api_routers = routers()
    _name_actions(api_routers)
    for router in api_routers:
        app.include_router(router)

    @app.get("/healthz", tags=["health"], summary="Liveness: the gateway process is serving")
    async def healthz() -> Health:
        return Health(status="ok")

    _document_errors_as_400(app)
    return app


def api_routes(api_routers: list[Any]) -> list[tuple[str, APIRoute]]:
    return [(m, r) for router in api_routers for r in router.routes if isinstance(r, APIRoute)
            for m in sorted(r.methods or ())]


def missing_actions(api_routers: list[Any]) -> list[str]:
    """``METHOD /path`` of every /api/v1 route with no entry in ``capstan_core.actions.REST``."""
    return [f"{m} {r.path}" for m, r in api_routes(api_routers) if actions.rest_action(m, r.path) is None]


def _name_actions(api_routers: list[Any]) -> None:
    """Each route's action in its OpenAPI operation (``x-capstan-action``, ``x-capstan-access``).
    A route without one is refused by ``authorize`` at every request (the route test names it)."""
    for method, route in api_routes(api_routers):
        action = actions.rest_action(method, route.path)
        if action is not None:
            route.openapi_extra = {**(route.openapi_extra or {}), "x-capstan-action": action.name,
                                   "x-capstan-access": action.access, "x-capstan-scope": action.scope}


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
