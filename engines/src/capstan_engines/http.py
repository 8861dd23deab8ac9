"""The HTTP plumbing every engine shares: bounded JSON bodies, OpenAI-shaped errors for every failure
(unknown route, wrong method, bad JSON, anything unexpected), and a uvicorn server whose SIGTERM stops
accepting, lets in-flight requests finish (up to a bound) and exits 0."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import ApiError

log = logging.getLogger("capstan_engines")

MAX_BODY_BYTES = 4 * 1024 * 1024  # the gateway caps bodies at 600 KB; direct callers get a little more room


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object, or a 413 (too big) / 400 (not a JSON object)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    return body


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """The handler with ApiError turned into its OpenAI-shaped response."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e)

    run.__name__ = handler.__name__
    return run


def install_error_handlers(app: Starlette) -> None:
    async def http_error(_: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "no such route", 405: "method not allowed"}.get(status, str(getattr(exc, "detail", "")))
        return error_response(ApiError(status, message, code="not_found" if status == 404 else None))

    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error", exc_info=exc)
        return error_response(ApiError(500, "the engine failed to serve this request", code="internal_error"))

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


class GracefulServer(uvicorn.Server):
    """uvicorn, except that SIGTERM/SIGINT end the process with 0 after the graceful shutdown (uvicorn
    re-raises the signal, which would make every stop look like a crash to the agent)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, sig: int, _frame: Any) -> None:
        log.info("signal %d: draining in-flight requests, then exiting", sig)
        self.should_exit = True


def serve(app: Starlette, host: str, port: int, drain_seconds: float) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(drain_seconds)))
    GracefulServer(config).run()
