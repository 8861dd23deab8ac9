"""gRPC invocation: any method forwarded as raw bytes by metadata x-ti-service, unary and streaming, with
the service key, and the caller's trace continued to the replica (a FAKE echo server stands for it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from capstan_core import tracing
from capstan_core.natsserver import free_port
from capstan_gateway import GatewaySettings

from .invoke_support import StubRouteSource, route, served_gateway

MS = "ms-grpc1234"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class FakeEcho(grpc.GenericRpcHandler):
    """FAKE model server: /echo.Echo/Unary answers its request; /echo.Echo/Stream answers 3 times."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        self.seen.append({k: v for k, v in details.invocation_metadata or ()})
        if details.method == "/echo.Echo/Unary":
            async def unary(request: bytes, context: Any) -> bytes:
                return b"echo:" + request
            return grpc.unary_unary_rpc_method_handler(unary)
        if details.method == "/echo.Echo/Stream":
            async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
                for i in range(3):
                    yield request + str(i).encode()
            return grpc.unary_stream_rpc_method_handler(stream)
        return None


@pytest.fixture
async def echo() -> AsyncIterator[tuple[FakeEcho, str]]:
    handler = FakeEcho()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield handler, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_grpc_calls_are_forwarded_by_x_ti_service(settings: GatewaySettings, echo: tuple[FakeEcho, str]) -> None:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("gateway-tests", exporter=exporter)
    port = free_port()
    settings = settings.model_copy(update={"invoke_grpc_listen": f"127.0.0.1:{port}"})
    async with served_gateway(settings, StubRouteSource(route(MS, [("r1", "v1", echo[1])]))):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            md = [("x-ti-service", MS), ("authorization", "Bearer sk-good"),
                  ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01")]
            unary = ch.unary_unary("/echo.Echo/Unary")
            assert await unary(b"hi", metadata=md) == b"echo:hi"
            stream = ch.unary_stream("/echo.Echo/Stream")
            assert [m async for m in stream(b"s", metadata=md)] == [b"s0", b"s1", b"s2"]
            seen = echo[0].seen[-1]
            assert seen["traceparent"].split("-")[1] == TRACE  # the trace continues through the stream
            assert "authorization" not in seen and seen["x-ti-service"] == MS
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await unary(b"x", metadata=[("x-ti-service", MS), ("authorization", "sk-wrong")])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await unary(b"x", metadata=[("x-ti-service", "ms-nothere")])
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await ch.unary_unary("/echo.Echo/Missing")(b"x", metadata=md)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    exporter.shutdown()
    assert any(s.name == "invoke /echo.Echo/Stream" and format(s.context.trace_id, "032x") == TRACE
               for s in exporter.get_finished_spans())
