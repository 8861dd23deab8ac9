"""OpenTelemetry: one propagator for gRPC metadata and NATS headers.

Each service gets its tracer as ``tracer(<service>)``; the instrumentation scope
name is ``capstan.<service>`` so one trace shows which service did what, even
when several services share a process (the tests do).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

_configured = False


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> None:
    """Install a tracer provider once per process. OTLP export when an endpoint is configured.

    Called again (several services, or tests, in one process), it only adds ``exporter``."""
    global _configured
    if _configured:
        provider_now = trace.get_tracer_provider()
        if exporter is not None and isinstance(provider_now, TracerProvider):
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            provider_now.add_span_processor(SimpleSpanProcessor(exporter))
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"capstan-{service_name}"}))
    if exporter is not None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(exporter))
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer(service: str) -> trace.Tracer:
    return trace.get_tracer(f"capstan.{service}")


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Write the current trace context (``traceparent``...) into headers or metadata."""
    propagate.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    return propagate.extract(dict(carrier or {}))


@contextmanager
def attached(ctx: otel_context.Context) -> Iterator[None]:
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_traceparent() -> str:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")
