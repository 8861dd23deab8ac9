"""How a fine-tuning task gets its code, base model and data today: the ONE place to rewire.

SPEC 3.5 pre-fills storage rows (platform code -> /opt/ml/code, platform model ->
/opt/ml/pretrain_model, sample data -> /opt/ml/input/data/train). Until tasks have storage rows, the
platform's Python prefix is the read-only location every sandbox binds (``sandbox/argv.py``:
``python_prefixes``), so the inputs are published under ``<prefix>/share/capstan/`` in directories
named by content hash (immutable once written, shared by every task), the hyperparameters point the
template at them, and the command copies the template's code into ``/opt/ml/code``. When storage rows
exist, :func:`task_inputs` returns rows and the template's default paths instead; nothing else changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import make_world_readable, readable_dirs

PACKAGE_DIR = Path(__file__).resolve().parent


def share_root() -> Path:
    """Where built-in models and staged inputs live: bound read-only into every sandbox."""
    return Path(os.environ.get("CAPSTAN_MODEL_SHARE") or Path(sys.prefix) / "share" / "capstan")


def models_root() -> Path:
    return share_root() / "models"


@dataclass(frozen=True)
class TaskInputs:
    command: str
    hyperparameters: dict[str, Any]


def task_inputs(base_model: Path, data: Path, hyperparameters: dict[str, Any] | None = None) -> TaskInputs:
    """The start command and hyperparameters of a fine-tuning task on ``base_model`` and ``data``."""
    code = _publish(PACKAGE_DIR, "code", "capstan_finetune")
    model = base_model if base_model.resolve().is_relative_to(share_root().resolve()) else _publish(
        base_model, "models", base_model.name)
    staged_data = _publish(data, "data", "train")
    command = f"cp -r {code} /opt/ml/code/ && exec python3 -m capstan_finetune"
    return TaskInputs(command, {**(hyperparameters or {}), "PretrainModelPath": str(model),
                                "TrainDataPath": str(staged_data)})


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _publish(src: Path, kind: str, name: str) -> Path:
    """``<share>/<kind>/<digest>/<name>``, copied once (world-readable: the sandbox's uid reads it)."""
    dest = share_root() / kind / _digest(src) / name
    if dest.exists():
        return dest
    tmp = dest.parent / f".{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    readable_dirs(dest.parent)
    if src.is_dir():
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        tmp.mkdir()
        shutil.copy2(src, tmp / src.name)
    make_world_readable(tmp)
    try:
        tmp.rename(dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.exists():
            raise
    return dest
