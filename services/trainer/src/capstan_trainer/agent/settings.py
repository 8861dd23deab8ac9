"""Trainer agent settings (``CAPSTAN_*`` environment variables)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from capstan_core.nodeauth import NodeAuthSettings


class AgentSettings(NodeAuthSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    scheduler_addr: str = "127.0.0.1:50051"
    trainer_addr: str = "127.0.0.1:50052"
    resource_group: str = "default"  # a resource group id (rsg-...) or name
    node_name: str = socket.gethostname()
    agent_dir: Path = Path(".capstan/agents/local")
    node_cpu: float = 0.0  # 0: detect
    node_memory_gib: float = 0.0  # 0: detect
    node_gpus: str = ""  # e.g. "A100:8": declared (simulated) cards, for multi-node tests on one machine
    heartbeat_s: float = 2.0
    health_check_s: float = 300.0  # how often the node's health checks run (disk, memory, GPUs, sandbox)
    reconcile_s: float = 1.0
    log_level: str = "INFO"
    # Durable training output (/opt/ml/output, /opt/ml/model) lives under storage_dir, by default
    # <data_dir>/storage: shared by every agent started from one data dir; a shared mount across machines.
    storage_dir: Path | None = None
    output_sync_s: float = 30.0  # how often a running instance's output is copied to storage

    @property
    def storage_root(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"
