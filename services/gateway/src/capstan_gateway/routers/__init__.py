"""The /api/v1 routers, one module per resource. Each is made by ``api_router``, which adds the
authentication and authorization (``authorize``: the action table, ownership, policies) every /api/v1
route needs, so no route can forget it.

Each router carries its full prefix (rather than being nested under an /api/v1 router) so a
matched route's ``path`` is the whole template the request span is named after.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..authorize import authorize
from ..body import GatewayRoute
from ..errors import ErrorBody

API_PREFIX = "/api/v1"

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "invalid_argument",
        401: "unauthenticated",
        403: "permission_denied",
        404: "not_found",
        409: "already_exists, conflict or failed_precondition",
        413: "payload_too_large: the request body exceeds 1 MiB",
        503: "unavailable: an owning service cannot be reached",
    }.items()
}


def api_router(resource: str, *, public: bool = False) -> APIRouter:
    """The router of one resource: ``/api/v1/<resource>``, tagged ``<resource>``, authenticated and
    authorized (unless ``public``: logging in), its JSON bodies refused unless storable (``GatewayRoute``),
    every error status documented."""
    return APIRouter(
        prefix=f"{API_PREFIX}/{resource}",
        tags=[resource],
        dependencies=[] if public else [Depends(authorize)],
        responses=_ERRORS,
        route_class=GatewayRoute,
    )


def routers() -> list[APIRouter]:
    from . import (
        access,
        accounts,
        admin,
        audit,
        images,
        join_tokens,
        models,
        nodes,
        policies,
        resource_groups,
        service_metrics,
        services,  # online services (issue #9)
        tensorboard,
        training_tasks,
    )

    return [resource_groups.router, nodes.router, join_tokens.router, training_tasks.router, tensorboard.router,
            images.router, models.router, admin.router, services.router,
            service_metrics.router, *accounts.routers, policies.router,
            audit.router, access.router]


__all__ = ["API_PREFIX", "api_router", "routers"]
