"""gRPC plumbing: servers with health checking, reflection, tracing and error mapping;
client channels that carry the trace context. One way to call another service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import tracing
from .errors import ERRORS_BY_CODE, DomainError, Unavailable

log = logging.getLogger(__name__)

GRPC_CODE: dict[str, grpc.StatusCode] = {
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "conflict": grpc.StatusCode.ABORTED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
}
CODE_BY_GRPC = {v: k for k, v in GRPC_CODE.items()}
# Trailing metadata on every status a service raised itself: a caller tells "the owner answered
# Unavailable (its NATS is down, a service it calls is down)" from "nothing answered".
ANSWERED_BY = "capstan-answered-by"


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Extracts the trace context from metadata, opens a server span, and maps DomainError to a status."""

    def __init__(self, service: str) -> None:
        self._tracer = tracing.tracer(service)
        self._answered_by = ((ANSWERED_BY, service),)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = details.method
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        tracer = self._tracer
        answered_by = self._answered_by

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracing.attached(tracing.extract(metadata)), tracer.start_as_current_span(
                method.lstrip("/"), kind=SpanKind.SERVER
            ) as span:
                try:
                    return await inner(request, context)
                except DomainError as e:
                    span.set_status(Status(StatusCode.ERROR, e.message))
                    # Domain messages name their field themselves ("ResourceRule.DefaultQueue must be ...").
                    code = GRPC_CODE.get(e.code, grpc.StatusCode.FAILED_PRECONDITION)
                    await context.abort(code, e.message, trailing_metadata=answered_by)
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    log.exception("%s failed", method)
                    span.set_status(Status(StatusCode.ERROR, str(e)))
                    await context.abort(
                        grpc.StatusCode.INTERNAL, "internal error; see the service log", trailing_metadata=answered_by
                    )

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current trace context to the call's metadata."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        carrier = tracing.inject({})
        metadata = list(client_call_details.metadata or []) + list(carrier.items())
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=[ClientInterceptor()])


def answered(e: grpc.aio.AioRpcError) -> bool:
    """Whether the called service itself raised this status (rather than the transport, or no one)."""
    return any(k == ANSWERED_BY for k, _ in (e.trailing_metadata() or ()))


def to_domain_error(e: grpc.aio.AioRpcError, service: str = "platform") -> DomainError:
    """Map a failed call to ``service`` back to the domain error it raised (at the calling edge).
    When it did not answer (down, unreachable, too slow), the Unavailable names ``service``."""
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unavailable(f"the {service} service did not answer in time; retry shortly")
    if e.code() == grpc.StatusCode.UNAVAILABLE and not answered(e):
        return Unavailable(f"the {service} service is not reachable; retry shortly")
    code = CODE_BY_GRPC.get(e.code())
    if code is None:
        return DomainError(e.details() or "internal error")
    cls = ERRORS_BY_CODE[code]
    return cls(e.details() or code)


class GrpcServer:
    """A grpc.aio server with the standard health service and reflection."""

    def __init__(self, service: str, listen: str) -> None:
        self.server = grpc.aio.server(interceptors=[ServerInterceptor(service)])
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.port = self.server.add_insecure_port(listen)
        self.address = f"{listen.rsplit(':', 1)[0]}:{self.port}"

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_names: Sequence[str]) -> None:
        register(servicer, self.server)
        self._names.extend(full_names)

    async def start(self) -> None:
        reflection.enable_server_reflection([*self._names, reflection.SERVICE_NAME], self.server)
        await self.server.start()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)

    async def _set_all(self, status: int) -> None:
        for name in ["", *self._names]:
            result = self.health.set(name, status)
            if hasattr(result, "__await__"):
                await result

    async def stop(self, grace: float = 1.0) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


async def check_health(address: str, timeout: float = 1.0) -> bool:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
