"""One trace covers the REST call, the gRPC command, the appended event and its handling in the
other services: gateway -> trainer (gRPC + append) -> scheduler (projection + its own append) -> trainer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from capstan_core import tracing
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_gateway.app import create_app
from capstan_gateway.settings import GatewaySettings
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER


async def test_one_trace_id_across_gateway_trainer_and_scheduler(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> None:
    EXPORTER = InMemorySpanExporter()  # noqa: N806
    tracing.setup_tracing("tests", exporter=EXPORTER)
    sched = Service(SCHEDULER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "s", nats_url=nats_server.url))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address))
    await trainer.start()
    settings = GatewaySettings(
        data_dir=tmp_path / "gw", secrets_dir=secrets_dir, scheduler_addr=sched.address, trainer_addr=trainer.address)
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            token = (settings.data_dir / "admin-token").read_text().strip()
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw", headers={"Authorization": f"Bearer {token}"}
            ) as client:
                rg = (await client.post("/api/v1/resource-groups", json={"name": "traced"})).json()
                EXPORTER.clear()
                resp = await client.post(
                    "/api/v1/training-tasks",
                    json={"name": "t", "resource_group_id": rg["id"], "command": "true", "resources": {"cpu": 1, "memory_gib": 1}},
                )
                assert resp.status_code == 201, resp.text
                task_id = resp.json()["id"]
                for _ in range(100):  # until the scheduler has queued it and the trainer has seen that
                    status = (await client.get(f"/api/v1/training-tasks/{task_id}")).json()["status"]
                    if status == "Queued":
                        break
                    await asyncio.sleep(0.05)
                assert status == "Queued"
    finally:
        await trainer.stop()
        await sched.stop()

    spans = EXPORTER.get_finished_spans()
    rest = [s for s in spans if s.instrumentation_scope.name == "capstan.gateway" and "training-tasks" in s.name and s.name.startswith("POST")]
    assert rest, [s.name for s in spans]
    trace_id = rest[0].context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    services = {s.instrumentation_scope.name for s in in_trace}
    assert {"capstan.gateway", "capstan.trainer", "capstan.scheduler"} <= services, sorted((s.instrumentation_scope.name, s.name) for s in in_trace)
    names = {s.name for s in in_trace}
    assert "capstan.v1.Trainer/CreateTrainingTask" in names  # the gRPC command
    assert "project TrainingTaskSubmitted" in names  # the appended event, handled by other services
    assert "schedule WorkloadQueued" in names  # the scheduler's own decision continues the trace
