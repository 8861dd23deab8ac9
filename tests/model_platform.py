"""Scheduler, trainer and registry in-process over the test's nats-server, with real trainer agents (bubblewrap
sandboxes) as nodes sharing ``<tmp>/storage``: what the registry and fine-tuning flow tests drive."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_proto import (
    common_pb2,
    registry_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from capstan_registry.service import DEFINITION as REGISTRY
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.agent.agent import TrainerAgent
from capstan_trainer.agent.settings import AgentSettings
from capstan_trainer.service import DEFINITION as TRAINER
from capstan_trainer.testing import TaskReads, stop_agents


@dataclass
class ModelPlatform(TaskReads):
    tmp: Path
    sched: Service
    trainer: Service
    registry: Service
    s: scheduler_pb2_grpc.SchedulerStub
    t: trainer_pb2_grpc.TrainerStub
    r: registry_pb2_grpc.RegistryStub
    rg: str
    agents: list[TrainerAgent] = field(default_factory=list)
    wait_timeout = 60.0  # fine-tuning runs are slower than the trainer's own tests

    @property
    def storage(self) -> Path:
        return self.tmp / "storage"

    async def submit(self, command: str, hyperparameters: dict[str, Any] | None = None, cpu: float = 1,
                     memory_gib: float = 2, **extra: Any) -> trainer_pb2.TrainingTask:
        return await self.t.CreateTrainingTask(trainer_pb2.CreateTrainingTaskRequest(
            name="task", resource_group_id=self.rg, command=command,
            hyperparameters_json=json.dumps(hyperparameters or {}),
            resources=common_pb2.Resources(cpu=cpu, memory_gib=memory_gib), **extra))


@asynccontextmanager
async def model_platform(tmp: Path, nats_url: str, secrets: Path, node_cpu: float = 2, node_memory_gib: float = 4,
                         policy: dict[str, Any] | None = None) -> AsyncIterator[ModelPlatform]:
    sched = Service(SCHEDULER, ServiceSettings(data_dir=tmp / "s", nats_url=nats_url, secrets_dir=secrets))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(data_dir=tmp / "t", nats_url=nats_url, scheduler_addr=sched.address,
                                               secrets_dir=secrets))
    await trainer.start()
    registry = Service(REGISTRY, ServiceSettings(data_dir=tmp / "r", nats_url=nats_url, trainer_addr=trainer.address,
                                                 storage_dir=tmp / "storage", secrets_dir=secrets))
    await registry.start()
    chans = [admin_channel(sched.address, "scheduler", secrets), admin_channel(trainer.address, "trainer", secrets),
             admin_channel(registry.address, "registry", secrets)]
    s = scheduler_pb2_grpc.SchedulerStub(chans[0])
    rg = (await s.CreateResourceGroup(scheduler_pb2.CreateResourceGroupRequest(
        name="models", policy_json=json.dumps(policy) if policy else ""))).id
    p = ModelPlatform(tmp, sched, trainer, registry, s, trainer_pb2_grpc.TrainerStub(chans[1]),
                      registry_pb2_grpc.RegistryStub(chans[2]), rg)
    token = (await s.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=rg))).token
    agent = TrainerAgent(AgentSettings(
        nats_url=nats_url, scheduler_addr=sched.address, trainer_addr=trainer.address,
        scheduler_bootstrap_addr=sched.bootstrap_address, ca_file=secrets / "ca.crt", join_token=token,
        resource_group=rg, node_name="node-a", agent_dir=tmp / "agent-a", data_dir=tmp, node_cpu=node_cpu,
        node_memory_gib=node_memory_gib, reconcile_s=0.2, **sandbox_testing.agent_settings(),  # type: ignore[arg-type]
    ))
    await agent.start()
    p.agents.append(agent)
    try:
        yield p
    finally:
        await stop_agents(p.agents)
        for ch in chans:
            await ch.close()
        await registry.stop()
        await trainer.stop()
        await sched.stop()
