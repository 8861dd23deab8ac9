"""Errors on the invocation routes, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json

from starlette.types import Send


class InvokeError(Exception):
    def __init__(
        self, status: int, message: str, code: str, type_: str = "invalid_request_error",
        param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type_
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return json.dumps(
            {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        ).encode()

    async def send(self, send: Send, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = self.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *self.headers, *(extra or [])]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def unauthorized(message: str) -> InvokeError:
    return InvokeError(401, message, "invalid_api_key")


def not_found(service_id: str) -> InvokeError:
    return InvokeError(404, f"The model `{service_id}` does not exist or you do not have access to it.",
                       "model_not_found", param="model")


def rate_limited(message: str, type_: str = "requests") -> InvokeError:
    return InvokeError(429, message, "rate_limit_exceeded", type_=type_)


def unavailable(message: str) -> InvokeError:
    return InvokeError(503, message, "service_unavailable", type_="server_error")


def bad_gateway(message: str) -> InvokeError:
    return InvokeError(502, message, "upstream_error", type_="server_error")
