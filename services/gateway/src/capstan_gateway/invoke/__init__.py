"""Invocation of online services (SPEC §6.3, §6.5, §6.8): the OpenAI-compatible routes, routing,
limits and call monitoring. ``mount`` wires it into the gateway app; the runtime starts in its lifespan."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from ..settings import GatewaySettings
from .handler import InvokeApp
from .routes import GrpcRouteSource, RouteSource
from .runtime import InvokeRuntime


def mount(app: FastAPI, settings: GatewaySettings) -> None:
    """The invocation routes (raw ASGI, in front of the management routes) and the metrics routes."""
    from ..routers.service_metrics import prometheus_router

    def runtime() -> InvokeRuntime | None:
        return getattr(app.state, "invoke", None)

    build = app.build_middleware_stack

    def outermost() -> ASGIApp:
        # Invocations go around the management stack (its middleware, exception handlers, router):
        # every layer costs on each call and each relayed chunk. InvokeApp opens the request's span
        # and answers its own errors; any other path goes on to the stack unchanged.
        return InvokeApp(
            build(),
            cache=lambda: (r.cache if (r := runtime()) else None),
            budgets=lambda: (r.budgets if (r := runtime()) else None),
            metrics=lambda: (r.metrics if (r := runtime()) else None),
            session=lambda: (r.session if (r := runtime()) else None),
        )

    app.build_middleware_stack = outermost  # type: ignore[method-assign]
    app.include_router(prometheus_router(settings.metrics_public))


async def start(app: FastAPI, settings: GatewaySettings, clients: Any) -> None:
    """Start the runtime when the gateway knows the inference service (or a test set a route source)."""
    source: RouteSource | None = getattr(app.state, "invoke_route_source", None)
    if source is None and clients.inference is not None:
        source = GrpcRouteSource(lambda req: clients.inference.call(clients.inference.stub.ListRoutes, req))
    app.state.invoke = runtime = await InvokeRuntime.start(settings, source) if source is not None else None
    app.state.invoke_grpc = None
    if runtime is not None and settings.invoke_grpc_listen:
        from .grpc_proxy import start_server

        app.state.invoke_grpc = await start_server(runtime, settings.invoke_grpc_listen)


async def stop(app: FastAPI) -> None:
    grpc_server = getattr(app.state, "invoke_grpc", None)
    if grpc_server is not None:
        server, handler, _ = grpc_server
        await server.stop(5)
        await handler.close()
    runtime: InvokeRuntime | None = getattr(app.state, "invoke", None)
    if runtime is not None:
        await runtime.stop()


__all__ = ["GrpcRouteSource", "InvokeRuntime", "RouteSource", "mount", "start", "stop"]
