"""The template's hyperparameters (SPEC 3.5): each preset with its default and meaning, parsed and
checked before anything is loaded. Values may be JSON numbers/booleans or their string spellings
(``"2"``, ``"true"``), as the reference product's form writes them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HYPERPARAMETERS_FILE = Path("/opt/ml/input/config/hyperparameters.json")
FINETUNING_TYPES = ("Lora", "Full")
ZERO_STAGES = ("z0", "z2", "z2_offload", "z3", "z3_offload")


@dataclass(frozen=True)
class Preset:
    key: str
    default: Any
    meaning: str


PRESETS: tuple[Preset, ...] = (
    Preset("Epoch", 2, "passes over the training data"),
    Preset("BatchSize", 1, "samples per step (per process)"),
    Preset("LearningRate", 1e-5, "AdamW learning rate"),
    Preset("Step", 750, "save a checkpoint every N optimizer steps (and when the task is asked to stop)"),
    Preset("UseTilearn", True, "use the fastest path available: no vendor library here; recorded, changes nothing"),
    Preset("FinetuningType", "Lora", "Lora (peft adapters, merged into the output) or Full (every weight)"),
    Preset("MaxSequenceLength", 2048, "longer samples are truncated (also to the model's own context length)"),
    Preset("GradientAccumulationSteps", 1, "micro-batches added up per optimizer step"),
    Preset("GradientCheckPointing", True, "recompute activations in the backward pass to save memory"),
    Preset("DeepspeedZeroStage", "z3", "z0, z2, z2_offload, z3, z3_offload; see the plan printed at start"),
    Preset("ResumeFromCheckpoint", True,
           "resume from the newest checkpoint in the output dir; false with a non-empty output dir is an error "
           "unless overwrite_output_dir is true"),
    Preset("overwrite_output_dir", False, "with ResumeFromCheckpoint false: empty the output dir first"),
    Preset("TilearnHybridTPSize", 1, "tensor parallel size"),
    Preset("TilearnHybridPPSize", 1, "pipeline parallel size"),
    # Capstan's additions: where things are (the storage rows of SPEC 3.5) and the LoRA shape.
    Preset("PretrainModelPath", "/opt/ml/pretrain_model", "the base model (Hugging Face layout)"),
    Preset("TrainDataPath", "/opt/ml/input/data/train", "a .jsonl file or a directory of them (all merged)"),
    Preset("OutputDir", "/opt/ml/output/data", "checkpoints (checkpoint-<step>) go here"),
    Preset("ModelDir", "/opt/ml/model", "the final model, servable as is (Hugging Face layout)"),
    Preset("LoraRank", 8, "rank of the LoRA matrices"),
    Preset("LoraAlpha", 16, "LoRA scaling numerator (scale = alpha / rank)"),
    Preset("LoraDropout", 0.0, "dropout on the LoRA input"),
    Preset("MaxSteps", 0, "stop after this many optimizer steps (0: Epoch decides)"),
    Preset("Seed", 42, "seed for weights of new layers and the data order"),
)
DEFAULTS = {p.key: p.default for p in PRESETS}


class HyperparameterError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    epochs: int
    batch_size: int
    learning_rate: float
    checkpoint_every: int
    use_tilearn: bool
    finetuning_type: str
    max_sequence_length: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    zero_stage: str
    resume: bool
    overwrite_output_dir: bool
    tp_size: int
    pp_size: int
    model_path: Path
    data_path: Path
    output_dir: Path
    model_dir: Path
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    max_steps: int
    seed: int
    raw: dict[str, Any]


def load(path: Path = HYPERPARAMETERS_FILE, overrides: dict[str, Any] | None = None) -> Config:
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = json.loads(path.read_text() or "{}")
        except ValueError as e:
            raise HyperparameterError(f"{path}: not JSON ({e})") from e
        if not isinstance(raw, dict):
            raise HyperparameterError(f"{path}: the hyperparameters must be a JSON object")
    return parse({**raw, **(overrides or {})})


def parse(raw: dict[str, Any]) -> Config:
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise HyperparameterError(f"unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    v = {**DEFAULTS, **raw}
    cfg = Config(
        epochs=_int(v, "Epoch", 1), batch_size=_int(v, "BatchSize", 1), learning_rate=_float(v, "LearningRate"),
        checkpoint_every=_int(v, "Step", 1), use_tilearn=_bool(v, "UseTilearn"),
        finetuning_type=_choice(v, "FinetuningType", FINETUNING_TYPES),
        max_sequence_length=_int(v, "MaxSequenceLength", 2),
        gradient_accumulation_steps=_int(v, "GradientAccumulationSteps", 1),
        gradient_checkpointing=_bool(v, "GradientCheckPointing"),
        zero_stage=_choice(v, "DeepspeedZeroStage", ZERO_STAGES), resume=_bool(v, "ResumeFromCheckpoint"),
        overwrite_output_dir=_bool(v, "overwrite_output_dir"), tp_size=_int(v, "TilearnHybridTPSize", 1),
        pp_size=_int(v, "TilearnHybridPPSize", 1), model_path=_path(v, "PretrainModelPath"),
        data_path=_path(v, "TrainDataPath"), output_dir=_path(v, "OutputDir"), model_dir=_path(v, "ModelDir"),
        lora_rank=_int(v, "LoraRank", 1), lora_alpha=_int(v, "LoraAlpha", 1),
        lora_dropout=_float(v, "LoraDropout", upper=1.0), max_steps=_int(v, "MaxSteps", 0), seed=_int(v, "Seed", 0),
        raw=v,
    )
    if cfg.learning_rate <= 0:
        raise HyperparameterError(f"LearningRate must be > 0 (got {cfg.learning_rate})")
    return cfg


def _int(v: dict[str, Any], key: str, minimum: int) -> int:
    x = v[key]
    if isinstance(x, str):
        try:
            x = int(x.strip())
        except ValueError:
            raise HyperparameterError(f"{key} must be a whole number (got {v[key]!r})") from None
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, int):
        raise HyperparameterError(f"{key} must be a whole number (got {v[key]!r})")
    if x < minimum:
        raise HyperparameterError(f"{key} must be at least {minimum} (got {x})")
    return x


def _float(v: dict[str, Any], key: str, upper: float | None = None) -> float:
    x = v[key]
    try:
        f = float(x.strip()) if isinstance(x, str) else float(x)
    except (TypeError, ValueError):
        raise HyperparameterError(f"{key} must be a number (got {x!r})") from None
    if isinstance(x, bool) or f != f or f in (float("inf"), float("-inf")) or f < 0:
        raise HyperparameterError(f"{key} must be a finite number >= 0 (got {x!r})")
    if upper is not None and f >= upper:
        raise HyperparameterError(f"{key} must be below {upper} (got {x!r})")
    return f


def _bool(v: dict[str, Any], key: str) -> bool:
    x = v[key]
    if isinstance(x, bool):
        return x
    if isinstance(x, str) and x.strip().lower() in ("true", "false"):
        return x.strip().lower() == "true"
    raise HyperparameterError(f"{key} must be true or false (got {x!r})")


def _choice(v: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    x = v[key]
    for c in choices:
        if isinstance(x, str) and x.strip().lower() == c.lower():
            return c
    raise HyperparameterError(f"{key} must be one of {', '.join(choices)} (got {x!r})")


def _path(v: dict[str, Any], key: str) -> Path:
    x = v[key]
    if not isinstance(x, str) or not x.strip():
        raise HyperparameterError(f"{key} must be a path (got {x!r})")
    return Path(x)
