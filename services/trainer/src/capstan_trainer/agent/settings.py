"""Trainer agent settings (``CAPSTAN_*`` environment variables)."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
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
    reconcile_s: float = 1.0
    log_level: str = "INFO"
