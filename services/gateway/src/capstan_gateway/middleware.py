"""The outermost layer of every request: a server span, a body-size cap, and the last-resort 500.

Written as plain ASGI (not BaseHTTPMiddleware) so the span's context is the one
the route's gRPC calls inherit, and so an unexpected exception ends here as a
JSON 500 with its traceback only in the log.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capstan_core import tracing

from .errors import error_response

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class _BodyTooLarge(Exception):
    pass


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES, auth_disabled: bool = False) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Every response says so while authentication is off (CAPSTAN_AUTH_DISABLED, loopback only).
        self.extra_headers = [(b"x-capstan-auth", b"disabled")] if auth_disabled else []
        self.tracer = tracing.tracer("gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        method: str = scope["method"]
        with (
            tracing.attached(tracing.extract(headers)),
            self.tracer.start_as_current_span(
                method, kind=SpanKind.SERVER, attributes={"http.request.method": method, "url.path": scope["path"]}
            ) as span,
        ):
            state: dict[str, Any] = {"started": False, "status": 500}
            trace_id = format(span.get_span_context().trace_id, "032x")

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    state["started"] = True
                    state["status"] = message["status"]
                    message.setdefault("headers", [])
                    message["headers"] = [*message["headers"], (b"x-trace-id", trace_id.encode()), *self.extra_headers]
                await send(message)

            try:
                declared = int(headers.get("content-length", "0") or 0)
            except ValueError:
                declared = 0
            try:
                if declared > self.max_body_bytes:
                    raise _BodyTooLarge
                await self.app(scope, self._capped(receive), send_traced)
            except _BodyTooLarge:
                if not state["started"]:
                    msg = f"the request body exceeds {self.max_body_bytes // 1024} KiB"
                    await error_response(413, "payload_too_large", msg)(scope, receive, send_traced)
            except Exception as e:
                log.exception("unhandled error in %s %s", method, scope["path"])
                span.record_exception(e)
                if not state["started"]:
                    await error_response(500, "internal", "internal error")(scope, receive, send_traced)
            route = scope.get("route")
            template = getattr(route, "path", None)
            if template:
                span.update_name(f"{method} {template}")
                span.set_attribute("http.route", template)
            span.set_attribute("http.response.status_code", state["status"])
            if state["status"] >= 500:
                span.set_status(Status(StatusCode.ERROR))

    def _capped(self, receive: Receive) -> Receive:
        received = 0

        async def capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        return capped
