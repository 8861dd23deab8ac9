"""Observing a task (SPEC §3.3 detail page): events, usage samples, checkpoints, evaluation results."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from capstan_core.errors import InvalidArgument

from .common import from_ms_required

# Evaluation results: the code writes one JSON object here (documented in README and architecture.md).
EVALUATION_FILE = "output/evaluation.json"
MAX_EVALUATION_BYTES = 1 << 20
# A checkpoint: a file or directory under output/ whose name says so (checkpoint-750/, ckpt-3.pt,
# last.ckpt), or a weights file (.pt, .pth, .ckpt, .safetensors) under output/.
_CHECKPOINT_NAME = re.compile(r"(^|/)(checkpoint|ckpt)[^/]*$", re.IGNORECASE)
_WEIGHTS = re.compile(r"\.(pt|pth|ckpt|safetensors)$", re.IGNORECASE)


def is_checkpoint(path: str, kind: str) -> bool:
    if not path.startswith("output/"):
        return False
    if _CHECKPOINT_NAME.search(path):
        return True
    inside = path.split("/")[1:-1]  # within a checkpoint directory: listed with the directory
    return kind == "file" and bool(_WEIGHTS.search(path)) and not any(_CHECKPOINT_NAME.search(p) for p in inside)


def evaluation_of(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_EVALUATION_BYTES:
        raise InvalidArgument(f"{EVALUATION_FILE} is larger than {MAX_EVALUATION_BYTES} bytes", field="evaluation")
    try:
        value = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"{EVALUATION_FILE} is not JSON: {e}", field="evaluation") from e
    if not isinstance(value, dict):
        raise InvalidArgument(f"{EVALUATION_FILE} must hold a JSON object", field="evaluation")
    return value


class TaskEventItem(BaseModel):
    time: datetime
    level: str = Field(description="info | warning | error")
    type: str
    message: str


class TaskEventList(BaseModel):
    items: list[TaskEventItem]


class GpuSample(BaseModel):
    index: int = Field(description="the card's index on its node")
    gpu_percent: float | None
    memory_bytes: int | None
    memory_percent: float | None


class MetricSample(BaseModel):
    time: datetime
    instance: int
    cpu_cores: float | None
    cpu_percent: float | None = Field(description="of the instance's CPU request")
    memory_bytes: int | None
    memory_percent: float | None = Field(description="of the instance's memory request (its limit)")
    gpus: list[GpuSample] = Field(default_factory=list, description="the cards it holds (a shared card's figures)")

    @classmethod
    def of(cls, ts_ms: int, instance: int, line: str) -> MetricSample:
        try:
            d = json.loads(line)
        except ValueError:
            d = {}
        d = d if isinstance(d, dict) else {}
        return cls(time=from_ms_required(ts_ms), instance=instance, cpu_cores=d.get("cpu_cores"),
                   cpu_percent=d.get("cpu_percent"), memory_bytes=d.get("memory_bytes"),
                   memory_percent=d.get("memory_percent"),
                   gpus=[GpuSample.model_validate(g) for g in d.get("gpus") or [] if isinstance(g, dict)])


class MetricsPage(BaseModel):
    samples: list[MetricSample]
    last_seq: int
