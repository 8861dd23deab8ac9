"""The /api/v1 routers. Authentication is required here, once, for every route below."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import current_principal
from ..errors import ErrorBody
from . import nodes, resource_groups, training_tasks

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "invalid_argument",
        401: "unauthenticated",
        403: "permission_denied",
        404: "not_found",
        409: "already_exists, conflict or failed_precondition",
        503: "unavailable: an owning service cannot be reached",
    }.items()
}

api_router = APIRouter(prefix="/api/v1", dependencies=[Depends(current_principal)], responses=_ERRORS)
api_router.include_router(resource_groups.router)
api_router.include_router(nodes.router)
api_router.include_router(training_tasks.router)

__all__ = ["api_router"]
