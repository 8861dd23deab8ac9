"""Checkpoints in the output dir: ``checkpoint-<step>/`` (the trainable weights, the optimizer state and
where the data loop stood), written to a temporary name and renamed, so an eviction mid-write never
leaves a checkpoint that looks complete. The newest complete one is where a run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .hparams import Config, HyperparameterError

PREFIX = "checkpoint-"
STATE = "trainer_state.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    found = []
    if output_dir.is_dir():
        for d in output_dir.iterdir():
            if d.name.startswith(PREFIX) and d.name[len(PREFIX):].isdigit() and (d / STATE).is_file():
                found.append((int(d.name[len(PREFIX):]), d))
    return sorted(found)


def prepare_output_dir(cfg: Config) -> Path | None:
    """Apply the SPEC 3.5 rule; the checkpoint to resume from, if any.

    ResumeFromCheckpoint true: the newest checkpoint (None when there is none). False: the output dir
    must be empty, unless overwrite_output_dir is true, which empties it."""
    out = cfg.output_dir
    if cfg.resume:
        out.mkdir(parents=True, exist_ok=True)
        found = list_checkpoints(out)
        return found[-1][1] if found else None
    if out.is_dir() and any(out.iterdir()):
        if not cfg.overwrite_output_dir:
            raise HyperparameterError(
                f"ResumeFromCheckpoint is false but the output dir {out} is not empty; set ResumeFromCheckpoint to "
                "true to resume from its newest checkpoint, or overwrite_output_dir to true to start over"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return None


def save(output_dir: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
    import torch
    from safetensors.torch import save_file

    final = output_dir / f"{PREFIX}{step}"
    tmp = output_dir / f".{PREFIX}{step}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / WEIGHTS))
    model.save_pretrained(tmp)  # the adapter (Lora) or the whole model (Full), in Hugging Face layout
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def load(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise HyperparameterError(
            f"checkpoint {path} does not match this run ({len(missing)} trainable tensors missing, e.g. {missing[0]}): "
            "was it made with another FinetuningType or LoRA shape? Use another OutputDir or overwrite_output_dir"
        )
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER, weights_only=True, map_location="cpu"))  # moved to the params' device
    state: dict[str, Any] = json.loads((path / STATE).read_text())
    return state
