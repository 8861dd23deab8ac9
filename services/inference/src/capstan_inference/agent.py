"""``capstan-inference-agent``: joins a resource group as an inference node and heartbeats.
Running model-server instances comes with the online-services issue."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from capstan_agentkit.membership import NodeMembership
from capstan_core import grpcutil
from capstan_core.capacity import detect
from capstan_core.nodeauth import NodeAuthSettings
from capstan_core.service import agent_main, until_terminated, write_ready_file
from capstan_proto import scheduler_pb2_grpc


class InferenceAgentSettings(NodeAuthSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    scheduler_addr: str = "127.0.0.1:50051"
    resource_group: str = "default"
    node_name: str = socket.gethostname() + "-inference"
    agent_dir: Path = Path(".capstan/agents/inference")
    node_cpu: float = 0.0
    node_memory_gib: float = 0.0
    node_gpus: str = ""
    heartbeat_s: float = 2.0
    log_level: str = "INFO"


async def _run(settings: InferenceAgentSettings, ready_file: str | None) -> None:
    creds = await settings.node_credentials(
        settings.agent_dir / "credentials", node_name=settings.node_name, resource_group=settings.resource_group,
        agent_kind="inference",
    )
    channel = grpcutil.channel(settings.scheduler_addr, "scheduler", creds.tls)
    membership = NodeMembership(
        scheduler_pb2_grpc.SchedulerStub(channel), resource_group=creds.resource_group_id, node_name=settings.node_name,
        agent_kind="inference", capacity=detect(settings.node_cpu, settings.node_memory_gib, settings.node_gpus),
        heartbeat_s=settings.heartbeat_s,
    )
    node_id = await membership.join()
    if ready_file:
        write_ready_file(ready_file, node_id)
    beat = asyncio.create_task(membership.heartbeat_forever())
    await until_terminated()
    beat.cancel()
    await channel.close()


def main() -> None:
    settings = InferenceAgentSettings()
    agent_main("inference-agent", settings.log_level, lambda ready: _run(settings, ready))


if __name__ == "__main__":
    main()
