"""Nothing published into the event log stops a service (issue #7, part 3), in-process, on SQLite and PostgreSQL.

The four services run on one nats-server. Into their stream go: plain text (on a live resource group's
own subject, so commands on that group must skip it when they load it), JSON of the wrong shape, a known
event type at a newer version, an oversized message, a valid-looking event with a field of the wrong type
(a task whose ``resources`` is null, as the security review found), and two models with one name (the
registry's read model refuses the second: an ``apply`` that raises). Then every service is still serving,
everything appended after the poison is applied and visible, each service's quarantine names each poison
message on a subject it reads with its sequence and error (the registry and the inference service decode
only their own subjects, so the poison goes on a model's and a service group's subject too), its counter
counts them, a rebuild from zero writes the same rows, and the gateway's admin route shows it all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import MetaData, select

from capstan_core.db import make_engine, quarantine_table, table_digest
from capstan_core.eventstore import EventStore
from capstan_core.metrics import QUARANTINED
from capstan_core.projection import reads, rebuild
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import event_subject
from capstan_core.testing import Poison, admin_channel, platform_poison, publish_poison
from capstan_gateway import GatewaySettings, create_app
from capstan_inference.service import DEFINITION as INFERENCE
from capstan_proto import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from capstan_registry.domain import ModelCreated
from capstan_registry.service import DEFINITION as REGISTRY
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.service import DEFINITION as TRAINER

DEFINITIONS = {d.name: d for d in (SCHEDULER, TRAINER, REGISTRY, INFERENCE)}


@dataclass
class Platform:
    services: dict[str, Service]
    channels: dict[str, grpc.aio.Channel]
    store: EventStore

    def admin(self, name: str) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channels[name])

    async def caught_up(self) -> None:
        """Every service's read models hold the whole stream."""
        last = await self.store.last_seq()
        for svc in self.services.values():
            assert svc.ctx is not None
            assert await svc.ctx.runner.wait_for(last, timeout=20), svc.definition.name


@pytest.fixture
async def platform(
    tmp_path: Path, nats_server: Any, database_urls: Any, secrets_dir: Path, nc: Any
) -> AsyncIterator[Platform]:
    services: dict[str, Service] = {}
    scheduler_addr = ""
    for name, definition in DEFINITIONS.items():
        svc = Service(definition, ServiceSettings(
            secrets_dir=secrets_dir, data_dir=tmp_path / name, nats_url=nats_server.url, database_url=database_urls(),
            scheduler_addr=scheduler_addr,
        ))
        await svc.start()
        services[name] = svc
        scheduler_addr = scheduler_addr or svc.address
    channels = {name: admin_channel(svc.address, name, secrets_dir) for name, svc in services.items()}
    # Only an admin connection can publish anything anywhere: the poison stands for a buggy or
    # compromised writer (the services' own NATS users may append only to their own aggregates).
    store = EventStore(nc.jetstream(timeout=10))
    try:
        yield Platform(services, channels, store)
    finally:
        for ch in channels.values():
            await ch.close()
        for svc in reversed(list(services.values())):
            await svc.stop()


async def _quarantine(p: Platform, name: str) -> list[admin_pb2.QuarantinedCommit]:
    resp = await p.admin(name).ListQuarantine(admin_pb2.ListQuarantineRequest(page=common_pb2.PageRequest(page_size=100)))
    assert resp.service == name and resp.total == len(resp.items)
    return list(resp.items)


async def test_poison_stops_no_service_and_every_service_sets_it_aside(platform: Platform, tmp_path: Path,
                                                                        database_urls: Any, secrets_dir: Path) -> None:
    p = platform
    s = scheduler_pb2_grpc.SchedulerStub(p.channels["scheduler"])
    rg = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="before-poison"))
    js = p.store._js  # noqa: SLF001 - the admin connection's JetStream

    # the poison, each kind on a model's subject and on a service group's (so each service reads every
    # kind: the registry and the inference service decode only the subjects they project); plain text
    # also on the live group's own subject
    poison: list[tuple[Poison, int, str]] = []
    for i, item in enumerate(platform_poison()):
        subjects = [event_subject("model", f"poison-{i}"), event_subject("service", f"ms-poison{i}")]
        if item.name == "plain text":
            subjects.insert(0, event_subject("rsg", rg.id))
        for subject in subjects:
            poison.append((item, await publish_poison(js, subject, item), subject))
    # two models with one name: the registry's read model refuses the second (its apply raises)
    for model_id in ("model-a", "model-b"):
        r = await p.store.append(event_subject("model", model_id), [ModelCreated(
            model_id=model_id, name="same-name", description="", tags={}, creator="x", at_ms=1)], expected_seq=0)
    duplicate_seq = r.seq

    # after the poison, every service still takes commands and applies what follows
    updated = await s.UpdateResourceGroup(scheduler_pb2.UpdateResourceGroupRequest(id=rg.id, description="edited"))
    assert updated.description == "edited"  # its subject holds the plain text: load skipped it
    after = await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(name="after-poison"))
    t = trainer_pb2_grpc.TrainerStub(p.channels["trainer"])
    task = await t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
        name="after", resource_group_id=after.id, command="true", resources=common_pb2.Resources(cpu=1, memory_gib=1)))
    model = await registry_pb2_grpc.RegistryStub(p.channels["registry"]).CreateModel(
        registry_pb2.CreateModelRequest(name="after-poison"))
    await s.JoinNode(scheduler_pb2.JoinNodeRequest(resource_group_id=after.id, name="inf-1", cpu=1, memory_gib=1,
                                                   agent_kind="inference"))
    await p.caught_up()
    for name, ch in p.channels.items():
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING, name
    assert (await s.GetResourceGroup(scheduler_pb2.GetResourceGroupRequest(id=after.id))).name == "after-poison"
    queued = await _until(lambda: _status(t, task.id), "Queued")
    assert queued == "Queued"  # the scheduler admitted it: its cycle runs
    got = await registry_pb2_grpc.RegistryStub(p.channels["registry"]).GetModel(registry_pb2.GetModelRequest(id=model.id))
    assert got.name == "after-poison"
    agents = await inference_pb2_grpc.InferenceStub(p.channels["inference"]).ListAgents(inference_pb2.ListAgentsRequest())
    assert [a.name for a in agents.items] == ["inf-1"]

    # each service's quarantine: every poison message on a subject it reads, with its sequence, kind and
    # error (the trainer and the scheduler read every subject; a message no projection of a service reads
    # is never decoded there, so it cannot stop that service either)
    wanted_by: dict[str, list[tuple[int, str]]] = {}
    for name in DEFINITIONS:
        rows = await _quarantine(p, name)
        projections = DEFINITIONS[name].projections()
        wanted = [(seq, item.kind) for item, seq, subject in poison if reads(projections, subject)]
        wanted += [(duplicate_seq, "apply_failed")] if name == "registry" else []
        wanted_by[name] = wanted
        assert len(wanted) >= len(platform_poison()), name  # every kind, at least once
        assert [(r.seq, r.kind) for r in rows] == wanted, name
        assert all(r.error and r.projection == name and r.stored_at_ms > 0 for r in rows)
        by_kind = {r.kind: r for r in rows}
        assert by_kind["invalid"].error == (
            "event 0 (TrainingTaskSubmitted): resources: Input should be a valid dictionary or instance of ResourceSpec")
        assert "ResourceGroupCreated v99 is newer than this service reads (v1)" in by_kind["newer_version"].error
        assert rows[0].subject == poison[0][2] or not reads(projections, poison[0][2])
        assert rows[0].error.startswith("not JSON")
        counters = await p.admin(name).GetCounters(admin_pb2.GetCountersRequest())
        quarantined = sum(c.value for c in counters.counters if c.name == QUARANTINED)
        assert quarantined == len(wanted), name
    registry_rows = await _quarantine(p, "registry")
    assert "UniqueViolation" in registry_rows[-1].error or "UNIQUE constraint failed" in registry_rows[-1].error

    # a rebuild from zero sets aside the same messages the same way: equal read models, quarantine included
    for name, svc in p.services.items():
        assert svc.ctx is not None
        fresh = make_engine(database_urls())
        try:
            await rebuild(name, svc.ctx.js, fresh, DEFINITIONS[name].projections(), DEFINITIONS[name].migrations, name)
            assert _rows(fresh) == _rows(svc.ctx.engine)
            assert table_digest(fresh) == table_digest(svc.ctx.engine), name
        finally:
            fresh.dispose()

    # the operator sees it through the gateway: every service's quarantine and counters
    settings = GatewaySettings(
        data_dir=tmp_path / "gw", secrets_dir=secrets_dir, auth_disabled=True, scheduler_addr=p.services["scheduler"].address,
        trainer_addr=p.services["trainer"].address, registry_addr=p.services["registry"].address,
        inference_addr=p.services["inference"].address,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as gw:
            report = (await gw.get("/api/v1/admin/quarantine")).json()
    assert [(s["service"], s["reachable"], s["quarantined"]) for s in report["services"]] == [
        ("scheduler", True, 11), ("trainer", True, 11), ("registry", True, 6), ("inference", True, 5)]
    assert {(i["service"], i["seq"]) for i in report["items"]} == {
        (name, seq) for name, wanted in wanted_by.items() for seq, _ in wanted}
    assert {(c["service"], c["labels"]["kind"], c["value"]) for c in report["counters"] if c["name"] == QUARANTINED} \
        >= {("registry", "apply_failed", 1), ("trainer", "invalid", 2), ("inference", "oversized", 1)}


_QUARANTINE = quarantine_table(MetaData())


def _rows(engine: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(_QUARANTINE).order_by(_QUARANTINE.c.seq))]


async def _status(t: trainer_pb2_grpc.TrainerStub, task_id: str) -> str:
    return str((await t.GetTrainingTask(trainer_pb2.GetTrainingTaskRequest(id=task_id))).status)


async def _until(fn: Any, value: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await fn()) != value:
        assert asyncio.get_running_loop().time() < deadline, f"still {got!r}, wanted {value!r}"
        await asyncio.sleep(0.05)
    return got
