"""gRPC invocation (SPEC §6.3): any method, forwarded as raw bytes to a replica of the service named by
metadata ``x-ti-service``, with the service's key in ``authorization`` when its auth is on. Unary and
streaming calls alike (one generic stream-stream handler: the wire does not tell them apart); the
caller's trace continues through a CLIENT span whose ``traceparent`` the replica receives; a caller
that cancels cancels the replica's call."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from capstan_core import tracing
from capstan_proto import inference_pb2

from . import oai_errors as err
from .handler import InvokeApp
from .metrics import Outcome
from .routes import Replica, Service
from .runtime import InvokeRuntime

log = logging.getLogger(__name__)

_HOP_BY_HOP = {"authorization", "traceparent", "tracestate", "user-agent"}
_STATUS_BY_HTTP = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
                   429: grpc.StatusCode.RESOURCE_EXHAUSTED, 502: grpc.StatusCode.UNAVAILABLE,
                   503: grpc.StatusCode.UNAVAILABLE}


class ForwardingHandler(grpc.GenericRpcHandler):
    def __init__(self, runtime: InvokeRuntime) -> None:
        self.runtime = runtime
        self.tracer = tracing.tracer("gateway")
        self._channels: dict[str, grpc.aio.Channel] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        method = method.decode() if isinstance(method, bytes) else method

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in self._forward(method, requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(forward)  # no (de)serializers: raw bytes

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return channel

    async def _forward(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        md = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        service_id = md.get("x-ti-service", "")
        started = time.perf_counter()
        try:
            svc, key, replica = await self._select(service_id, md)
        except err.InvokeError as e:
            await context.abort(_STATUS_BY_HTTP.get(e.status, grpc.StatusCode.UNAVAILABLE), e.message)
            raise  # abort raised already
        key_id = key.key_id if key else ""
        out_md = [(k, v) for k, v in md.items() if k not in _HOP_BY_HOP and not k.startswith(":")]
        outcome = Outcome("failed")
        replica.in_flight += 1
        replica.started += 1
        with tracing.attached(tracing.extract(md)), self.tracer.start_as_current_span(
            f"invoke {method}", kind=SpanKind.CLIENT, attributes={"rpc.method": method, "capstan.service": service_id}
        ):
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            call = self._channel(replica.address).stream_stream(method)(requests, metadata=[*out_md, *carrier.items()])
            try:
                async for response in call:
                    yield response
                outcome.status = "succeeded"
            except grpc.aio.AioRpcError as e:
                await context.abort(e.code(), e.details() or "the instance failed")
            finally:
                call.cancel()  # no-op when it finished; a caller that left cancels the replica's call
                replica.in_flight -= 1
                outcome.latency_ms = (time.perf_counter() - started) * 1000
                self.runtime.metrics.ended((svc.service_id, replica.version_id, key_id), outcome)

    async def _select(
        self, service_id: str, md: dict[str, str]
    ) -> tuple[Service, inference_pb2.RouteKey | None, Replica]:
        svc = await self.runtime.cache.get(service_id) if service_id else None
        if svc is None:
            raise err.InvokeError(404, f"no service {service_id!r}: set metadata x-ti-service to the service's id "
                                  "(ms-...)", "model_not_found")
        key = InvokeApp._authenticate(svc, md)
        replica = svc.choose()
        if replica is None:
            raise err.unavailable(f"Service {svc.service_id} has no ready instance; retry later.")
        return svc, key, replica

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def start_server(runtime: InvokeRuntime, listen: str) -> tuple[grpc.aio.Server, ForwardingHandler, int]:
    handler = ForwardingHandler(runtime)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                      ("grpc.max_send_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port(listen)
    await server.start()
    log.info("gRPC invocation on port %d (metadata x-ti-service)", port)
    return server, handler, port
