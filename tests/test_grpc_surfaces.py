"""Every gRPC server answers health checks and reflection, and maps domain errors to status codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from capstan_core.service import Service, ServiceDefinition
from capstan_core.settings import ServiceSettings
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_registry.service import DEFINITION as REGISTRY
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER

CASES = [
    (SCHEDULER, "capstan.v1.Scheduler"),
    (TRAINER, "capstan.v1.Trainer"),
    (REGISTRY, "capstan.v1.Registry"),
    (INFERENCE, "capstan.v1.Inference"),
]


@pytest.mark.parametrize(("definition", "full_name"), CASES, ids=[c[0].name for c in CASES])
async def test_health_and_reflection(definition: ServiceDefinition, full_name: str, tmp_path: Path, nats_server: Any) -> None:
    svc = Service(definition, ServiceSettings(data_dir=tmp_path, nats_url=nats_server.url, scheduler_addr="127.0.0.1:1"))
    await svc.start()
    try:
        async with grpc.aio.insecure_channel(svc.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", full_name):
                resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def requests():  # type: ignore[no-untyped-def]
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names = set()
            async for r in refl.ServerReflectionInfo(requests()):
                names |= {s.name for s in r.list_services_response.service}
            assert {full_name, "capstan.v1.Admin", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    finally:
        await svc.stop()
    # stopped: the port no longer answers
    async with grpc.aio.insecure_channel(svc.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
