"""``GET /api/v1/services/{ms-id}/metrics``: a service's call monitoring as a per-minute time series,
summed over every gateway process (SPEC §6.8); and ``GET /metrics``, this process's totals for
Prometheus (admin token, unless the operator sets ``CAPSTAN_METRICS_PUBLIC=true``)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from capstan_core.errors import PermissionDenied, Unavailable

from ..auth import Principal, current_principal
from ..errors import ErrorBody
from ..invoke.metrics import KEEP_MINUTES, prometheus_text, time_series
from . import api_router

router = api_router("services")


class MetricsSeries(BaseModel):
    service_id: str
    start_ms: int
    end_ms: int
    by: str
    points: list[dict[str, Any]]


def _runtime(request: Request) -> Any:
    runtime = getattr(request.app.state, "invoke", None)
    if runtime is None:
        raise Unavailable("the gateway is not serving services (CAPSTAN_INFERENCE_ADDR is not set)")
    return runtime


@router.get("/{id}/metrics", summary="Call monitoring of a service, per minute")
async def service_metrics(
    request: Request,
    service_id: Annotated[str, Path(alias="id", pattern=r"^ms-[0-9a-z]{1,32}$")],
    minutes: Annotated[int, Query(ge=1, le=KEEP_MINUTES)] = 60,
    by: Annotated[Literal["", "version", "key"], Query()] = "",
) -> MetricsSeries:
    """Calls received / succeeded / failed / throttled, mean latency, time to first token, time per
    output token and tokens in/out per minute; ``by=version`` or ``by=key`` splits each minute."""
    runtime = _runtime(request)
    await runtime.flush_samples()  # this process's latest counts are in the series
    end = int(time.time() // 60)
    start = end - minutes + 1
    points = time_series(await runtime.store.samples(service_id), start, end, by)
    return MetricsSeries(service_id=service_id, start_ms=start * 60_000, end_ms=(end + 1) * 60_000, by=by,
                         points=points)


async def _operator(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    """Every service's counters: the operator's to read (or anyone's, with CAPSTAN_METRICS_PUBLIC)."""
    if not principal.is_operator:
        raise PermissionDenied("the gateway's /metrics is the operator's (or set CAPSTAN_METRICS_PUBLIC=true)")
    return principal


def prometheus_router(public: bool) -> APIRouter:
    deps = [] if public else [Depends(_operator)]
    errors: dict[int | str, dict[str, Any]] = {
        503: {"model": ErrorBody, "description": "unavailable: the gateway serves no services"}}
    if not public:
        errors[401] = {"model": ErrorBody, "description": "unauthenticated"}
        errors[403] = {"model": ErrorBody, "description": "not the operator"}
    r = APIRouter(tags=["metrics"], dependencies=deps, responses=errors)

    text_200: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format"}}

    @r.get("/metrics", summary="Prometheus metrics of this gateway process", responses=text_200)
    async def metrics(request: Request) -> PlainTextResponse:
        text = prometheus_text(_runtime(request).metrics)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return r
