"""Settings from the environment (``CAPSTAN_*``), shared by every service process."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    data_dir: Path = Path(".capstan")
    nats_url: str = "nats://127.0.0.1:4222"
    # Empty: SQLite at <data_dir>/<service>.db. PostgreSQL: postgresql://user@host:port/db
    database_url: str = ""
    grpc_listen: str = "127.0.0.1:0"
    # The scheduler's TLS-only port where agents trade a join token for a node certificate.
    grpc_bootstrap_listen: str = "127.0.0.1:0"
    # Empty: <data_dir>/secrets (certificates, keys, NATS users; see capstan_core.credentials).
    secrets_dir: Path | None = None
    scheduler_addr: str = ""
    trainer_addr: str = ""
    registry_addr: str = ""
    inference_addr: str = ""
    log_level: str = "INFO"
    # Training storage (the trainer): the platform storage the agents save outputs to (empty:
    # <data_dir>/storage, as the agents'), the operator's storage backends (object stores, file-system
    # volumes, git credentials; empty: <data_dir>/storage.json) and price table (empty: <data_dir>/prices.json).
    storage_dir: Path | None = None
    storage_config: Path | None = None
    price_table: Path | None = None

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir if self.secrets_dir is not None else self.data_dir / "secrets"

    @property
    def storage_path(self) -> Path:
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"
