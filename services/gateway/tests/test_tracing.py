"""Each request is a SERVER span named after its route; the gRPC calls it makes continue its trace."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from capstan_core import tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("gateway-tests", exporter=exporter)
    yield exporter
    exporter.shutdown()  # later spans are dropped


async def test_request_span_is_parent_of_the_service_span(api: httpx.AsyncClient, spans: InMemorySpanExporter) -> None:
    rg = (await api.post("/api/v1/resource-groups", json={"name": "traced"})).json()
    spans.clear()
    r = await api.get(f"/api/v1/resource-groups/{rg['id']}")
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    [http] = [s for s in finished if s.name == "GET /api/v1/resource-groups/{id}"]
    assert http.kind == SpanKind.SERVER
    assert http.instrumentation_scope is not None and http.instrumentation_scope.name == "capstan.gateway"
    assert http.attributes is not None and http.attributes["http.response.status_code"] == 200
    assert r.headers["x-trace-id"] == format(http.context.trace_id, "032x")
    [rpc] = [s for s in finished if s.name == "capstan.v1.Scheduler/GetResourceGroup"]
    assert rpc.context.trace_id == http.context.trace_id
    assert rpc.parent is not None and rpc.parent.span_id == http.context.span_id


async def test_incoming_traceparent_is_continued(admin: httpx.AsyncClient, spans: InMemorySpanExporter) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await admin.get("/api/v1/nodes", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.status_code == 503
    [http] = [s for s in spans.get_finished_spans() if s.name == "GET /api/v1/nodes"]
    assert format(http.context.trace_id, "032x") == trace_id
    assert not http.status.is_ok
