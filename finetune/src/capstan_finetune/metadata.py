"""``capstan_model.json``: what a model directory says about itself, read by the model registry when it
is published (framework, task type, base model, chat template, parameter count, how it was made)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILE = "capstan_model.json"


def write(model_dir: Path, **fields: Any) -> None:
    (model_dir / FILE).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def read(model_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((model_dir / FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
