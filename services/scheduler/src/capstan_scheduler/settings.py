"""Scheduler-only settings (``CAPSTAN_*`` environment variables)."""

from __future__ import annotations

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .snapshot import DEFAULT_SHAREABLE


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    # A Running node silent this long becomes Abnormal (and Running again at its next heartbeat).
    node_abnormal_after_s: float = 15.0
    # An Abnormal node silent this long is lost for good: what ran there is restarted elsewhere.
    node_lost_after_s: float = 300.0
    # Periodic health checks are recorded when their outcome changes, and at least this often otherwise.
    health_record_every_s: float = 3600.0
    # Card types whose cards may be split into tenths (SPEC §7.3), comma-separated.
    shareable_gpu_types: str = ",".join(sorted(DEFAULT_SHAREABLE))

    @field_validator("node_abnormal_after_s", "node_lost_after_s", "health_record_every_s")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0 seconds")
        return v

    @property
    def shareable(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.shareable_gpu_types.split(",") if t.strip())
