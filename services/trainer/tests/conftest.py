"""What the trainer's end-to-end tests share: scheduler + trainer services in-process over the test's
real nats-server, one resource group, and a factory for real agents (bubblewrap sandboxes) as nodes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from capstan_agentkit.sandbox import testing as sandbox_testing
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.testing import admin_channel
from capstan_proto import scheduler_pb2, scheduler_pb2_grpc, trainer_pb2_grpc
from capstan_scheduler.service import DEFINITION as SCHEDULER
from capstan_trainer.agent.agent import TrainerAgent
from capstan_trainer.agent.settings import AgentSettings
from capstan_trainer.service import DEFINITION as TRAINER
from capstan_trainer.testing import TaskReads, stop_agents


@dataclass
class Platform(TaskReads):
    sched: Service
    trainer: Service
    s: scheduler_pb2_grpc.SchedulerStub
    t: trainer_pb2_grpc.TrainerStub
    tmp: Path
    nats_url: str
    secrets: Path
    agents: list[TrainerAgent] = field(default_factory=list)

    async def group(self, name: str, policy: dict[str, Any] | None = None) -> str:
        rg = await self.s.CreateResourceGroup(
            scheduler_pb2.CreateResourceGroupRequest(name=name, policy_json=json.dumps(policy) if policy else ""))
        return str(rg.id)

    async def join_token(self, resource_group: str) -> str:
        """A join token for ``resource_group``, made by the operator."""
        tok = await self.s.CreateJoinToken(scheduler_pb2.CreateJoinTokenRequest(resource_group_id=resource_group))
        return str(tok.token)

    def agent_settings(self, resource_group: str, name: str, token: str, **settings: Any) -> AgentSettings:
        values: dict[str, Any] = dict(node_cpu=2, node_memory_gib=4, reconcile_s=0.2, data_dir=self.tmp,
                                      **sandbox_testing.agent_settings())
        values.update(settings)
        return AgentSettings(
            nats_url=self.nats_url, scheduler_addr=self.sched.address, trainer_addr=self.trainer.address,
            scheduler_bootstrap_addr=self.sched.bootstrap_address, ca_file=self.secrets / "ca.crt",
            join_token=token, resource_group=resource_group, node_name=name,
            agent_dir=self.tmp / f"agent-{name}", **values)

    async def agent(self, resource_group: str, name: str, **settings: Any) -> TrainerAgent:
        """A started agent: one node of ``resource_group``, joined with a join token like a real machine.
        Agents share ``<tmp>/storage`` (one data dir)."""
        agent = TrainerAgent(self.agent_settings(resource_group, name, await self.join_token(resource_group), **settings))
        await agent.start()
        self.agents.append(agent)
        return agent


@pytest.fixture
async def platform(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[Platform]:
    sched = Service(SCHEDULER, ServiceSettings(data_dir=tmp_path / "s", nats_url=nats_server.url, secrets_dir=secrets_dir))
    await sched.start()
    trainer = Service(TRAINER, ServiceSettings(
        data_dir=tmp_path / "t", nats_url=nats_server.url, scheduler_addr=sched.address, secrets_dir=secrets_dir,
        storage_dir=tmp_path / "storage", storage_config=tmp_path / "storage.json"))  # shared with the agents
    await trainer.start()
    chs = admin_channel(sched.address, "scheduler", secrets_dir)
    cht = admin_channel(trainer.address, "trainer", secrets_dir)
    p = Platform(sched, trainer, scheduler_pb2_grpc.SchedulerStub(chs), trainer_pb2_grpc.TrainerStub(cht), tmp_path,
                 nats_server.url, secrets_dir)
    yield p
    await stop_agents(p.agents)
    await chs.close()
    await cht.close()
    await trainer.stop()
    await sched.stop()
