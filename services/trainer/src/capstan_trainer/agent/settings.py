"""Trainer agent settings (``CAPSTAN_*`` environment variables): every node agent's
(:class:`capstan_agentkit.settings.NodeAgentSettings`) plus the trainer's address, output sync and storage backends."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from capstan_agentkit.settings import NodeAgentSettings

from ..storage_backends import StorageConfig


class AgentSettings(NodeAgentSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    trainer_addr: str = "127.0.0.1:50052"
    output_sync_s: float = 30.0  # how often a running instance's output is copied to storage
    # The operator's storage backends (object stores, volumes, git credentials): <data_dir>/storage.json
    storage_config: Path | None = None

    def storage_backends(self) -> StorageConfig:
        return StorageConfig.load(self.storage_config or self.data_dir / "storage.json", self.storage_root)
