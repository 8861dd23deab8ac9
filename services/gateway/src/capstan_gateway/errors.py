"""Every failure leaves the gateway as ``{"error": {"code", "message"}}`` with one status per code.

Domain errors (raised here or mapped back from a service's gRPC status) are turned
into HTTP once, in these handlers; routes only raise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from capstan_core.errors import DomainError

log = logging.getLogger(__name__)

HTTP_STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "already_exists": 409,
    "conflict": 409,
    "failed_precondition": 409,
    "payload_too_large": 413,
    "resource_exhausted": 429,
    "internal": 500,
    "not_implemented": 501,
    "unavailable": 503,
}
CODE_BY_STATUS: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    429: "resource_exhausted",
    501: "not_implemented",
    503: "unavailable",
}


class Internal(DomainError):
    """An owning service failed unexpectedly; its log has the details."""

    code = "internal"


class NotImplementedYet(DomainError):
    code = "not_implemented"


class ResourceExhausted(DomainError):
    code = "resource_exhausted"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every non-2xx answer."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers or {}))


def status_for(error: DomainError) -> int:
    return HTTP_STATUS.get(error.code, 409)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    message = exc.message if not exc.field else f"{exc.field}: {exc.message}"
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == "unauthenticated" else None
    return error_response(status_for(exc), exc.code, message, headers)


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """``body.name: String should have at most 60 characters; query.page_size: ...``.

    The submitted value (``input``) is never echoed: it may be large, or a secret.
    """
    parts: list[str] = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            parts.append(f"body: the request body is not valid JSON ({reason} at position {loc.split('.')[-1]})")
            continue
        if loc == "body" and err.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("body: expected a JSON object, sent with Content-Type: application/json")
            continue
        parts.append(f"{loc}: {err.get('msg', 'invalid value')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "the request is invalid"


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, "invalid_argument", describe_validation_errors(exc.errors()))


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        message = f"no such route: {request.method} {request.url.path}; the API is described at /openapi.json"
    elif status == 405:
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed on {request.url.path} (allowed: {', '.join(allowed)})"
    else:
        message = str(exc.detail)
    code = CODE_BY_STATUS.get(status, "internal" if status >= 500 else "invalid_argument")
    return error_response(status, code, message, headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods the API documents at this path, HEAD with GET (Starlette's own 405 names only the
    first matching route's). As in OpenAPI, a concrete path (``/nodes/release``) is matched before a
    templated one (``/nodes/{id}``)."""
    segments = request.url.path.rstrip("/").split("/")
    best: tuple[int, set[str]] | None = None
    for template, item in request.app.openapi().get("paths", {}).items():
        parts = template.rstrip("/").split("/")
        if len(parts) != len(segments):
            continue
        templated = [p.startswith("{") and p.endswith("}") for p in parts]
        if all(t and s or p == s for p, s, t in zip(parts, segments, templated, strict=True)):
            rank = sum(templated)
            methods = {m.upper() for m in item}
            if best is None or rank < best[0]:
                best = (rank, methods)
            elif rank == best[0]:
                best[1].update(methods)
    allowed = best[1] if best else set()
    if "GET" in allowed:
        allowed.add("HEAD")
    return sorted(allowed)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
