"""gRPC plumbing: mutual-TLS servers that authenticate and authorise every call, with health
checking, reflection (admin only), tracing and error mapping; client channels that present the
caller's certificate and carry the trace context. One way to call another service."""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import identity, pki, tracing
from .credentials import TlsCredentials
from .errors import ERRORS_BY_CODE, DomainError, Unavailable
from .identity import Access

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
    """Authenticates and authorises every call, extracts the trace context, opens a server span,
    and maps DomainError to a status.

    The caller comes from the verified peer certificate (``identity.caller_from_certificate``)
    and must be allowed the method by the service's ``Access`` table; it is then available to
    the handler as ``identity.current_caller()``. Streaming methods (health Watch, reflection)
    are checked the same way.
    """

    def __init__(self, service: str, access: Access) -> None:
        self._tracer = tracing.tracer(service)
        self._access = access
        self._answered_by = ((ANSWERED_BY, service),)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        if handler.unary_unary is None:
            return _guard_streaming(handler, method, metadata, self._access)
        inner = handler.unary_unary
        tracer = self._tracer
        access = self._access
        answered_by = self._answered_by

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = await _authorise(context, method, metadata, access, answered_by)
            try:
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
            finally:
                identity.reset_caller(token)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _authorise(
    context: grpc.aio.ServicerContext, method: str, metadata: dict[str, str], access: Access,
    answered_by: tuple[tuple[str, str], ...] = (),
) -> contextvars.Token[identity.Caller]:
    """The verified caller, allowed ``method``, set as the current caller; aborts the call otherwise."""
    names = context.auth_context().get("x509_common_name") or []
    common_name = names[0].decode() if names else None
    try:
        caller = identity.caller_from_certificate(common_name, metadata)
        access.check(method, caller)
    except DomainError as e:
        await context.abort(GRPC_CODE[e.code], e.message, trailing_metadata=answered_by)
    return identity.set_caller(caller)


def _guard_streaming(
    handler: grpc.RpcMethodHandler, method: str, metadata: dict[str, str], access: Access
) -> grpc.RpcMethodHandler:
    """The same access check in front of a streaming method (health Watch, server reflection)."""
    inner: Any
    factory: Any
    if handler.unary_stream is not None:
        inner, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary is not None:
        inner, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    else:
        inner, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    if inspect.isasyncgenfunction(inner):

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = await _authorise(context, method, metadata, access)
            try:
                async for item in inner(request, context):
                    yield item
            except DomainError as e:  # as for unary calls: the domain error's status and message
                await context.abort(GRPC_CODE.get(e.code, grpc.StatusCode.FAILED_PRECONDITION), e.message)
            finally:
                identity.reset_caller(token)

        wrapped: Any = gen
    else:

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = await _authorise(context, method, metadata, access)
            try:
                return await inner(request, context)
            finally:
                identity.reset_caller(token)

        wrapped = call
    return factory(
        wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class ClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the current trace context, and the principal the gateway acts for, to the call's metadata."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        carrier = tracing.inject({})
        metadata = list(client_call_details.metadata or []) + list(carrier.items())
        acting = identity.acting_principal()
        if acting is not None:
            metadata.append((identity.PRINCIPAL_METADATA, acting.to_json()))
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


def channel(address: str, service: str, tls: TlsCredentials) -> grpc.aio.Channel:
    """A mutual-TLS channel to ``service`` at ``address``: the server must present that service's
    certificate (``<service>.capstan.internal``), and we present ours."""
    return grpc.aio.secure_channel(
        address, tls.channel_credentials(), options=[("grpc.ssl_target_name_override", pki.server_name(service))],
        interceptors=[ClientInterceptor()],
    )


def bootstrap_channel(address: str, ca_pem: bytes) -> grpc.aio.Channel:
    """A TLS channel without a client certificate, to the scheduler's bootstrap port (join tokens)."""
    return grpc.aio.secure_channel(
        address, grpc.ssl_channel_credentials(ca_pem),
        options=[("grpc.ssl_target_name_override", pki.server_name("scheduler"))],
    )


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


HEALTH_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
REFLECTION_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
# What every server answers besides its own methods: health to any platform identity,
# reflection (the whole API surface) only to the operator.
BASE_ACCESS = Access({
    **{m: (identity.ANY_AUTHENTICATED,) for m in HEALTH_METHODS},
    **{m: (identity.ADMIN,) for m in REFLECTION_METHODS},
})


class GrpcServer:
    """A grpc.aio mutual-TLS server with the standard health service and reflection.

    ``bootstrap_listen``: a second, TLS-only port (no client certificate) where the only methods
    open are those the access table gives to ``anonymous`` (the scheduler's BootstrapNode).
    """

    def __init__(
        self, service: str, listen: str, tls: TlsCredentials, access: Access, bootstrap_listen: str | None = None
    ) -> None:
        self.access = BASE_ACCESS.merged(access)
        self.server = grpc.aio.server(interceptors=[ServerInterceptor(service, self.access)])
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._names: list[str] = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        self.port = self.server.add_secure_port(listen, tls.server_credentials(require_client_auth=True))
        self.address = f"{listen.rsplit(':', 1)[0]}:{self.port}"
        self.bootstrap_address = ""
        if bootstrap_listen:
            port = self.server.add_secure_port(bootstrap_listen, tls.server_credentials(require_client_auth=False))
            self.bootstrap_address = f"{bootstrap_listen.rsplit(':', 1)[0]}:{port}"

    def add(
        self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_names: Sequence[str],
        access: Access | None = None,
    ) -> None:
        """Serve ``servicer``; ``access``: its methods' rules, when the service's own table lacks them."""
        register(servicer, self.server)
        self._names.extend(full_names)
        if access is not None:
            self.access.extend(access)

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


async def check_health(address: str, service: str, tls: TlsCredentials, timeout: float = 1.0) -> bool:
    async with channel(address, service, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
