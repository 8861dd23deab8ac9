from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ResourceSpec(BaseModel):
    """Resources of one instance (or a node's capacity)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu: float = 1.0
    memory_gib: float = 1.0
    gpu_type: str = ""
    gpu: float = 0.0
