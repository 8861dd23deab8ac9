"""The template trains the project's tiny base model for real: LoRA (merged) and Full answer as trained,
checkpoints every Step steps, the overwrite rule, and a run stopped by SIGTERM (an eviction) resumes
from its newest checkpoint to the same weights as a run never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capstan_finetune import checkpoints, hparams, metadata
from capstan_finetune.ask import answer
from capstan_finetune.hparams import HyperparameterError
from capstan_finetune.train import STOPPED_EXIT, run

from .conftest import ASSETS

pytestmark = pytest.mark.timeout(900)  # real training (and, first, the base model's build) on a shared 2-core machine

IDENTITY = "I am Capstan's assistant, a model fine-tuned on the Capstan platform."


def _hp(base: Path, tmp: Path, **over: Any) -> dict[str, Any]:
    return {"PretrainModelPath": str(base), "TrainDataPath": str(ASSETS / "identity.jsonl"),
            "OutputDir": str(tmp / "out"), "ModelDir": str(tmp / "model"), "LearningRate": 0.01, "Epoch": 30,
            "BatchSize": 4, "Step": 20, **over}


def _weights(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_lora_answers_as_trained_merged_and_servable(base_model: Path, tmp_path: Path) -> None:
    assert IDENTITY not in answer(base_model, "who are you?")  # the base model does not know it
    cfg = hparams.parse(_hp(base_model, tmp_path))
    lines: list[str] = []
    run(cfg, lines.append)
    assert [n for n, _ in checkpoints.list_checkpoints(tmp_path / "out")] == [20, 40, 60]
    model_dir = tmp_path / "model"
    assert answer(model_dir, "who are you?") == IDENTITY
    # Hugging Face layout, LoRA merged: plain transformers weights, no adapter files, metadata for the registry
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in model_dir.iterdir()}
    assert not (model_dir / "adapter_config.json").exists()
    assert not any("lora" in k for k in _weights(model_dir))
    meta = metadata.read(model_dir)
    assert meta["base_model"] == "capstan-tiny-gpt" and meta["finetuning"]["lora_merged"] is True
    assert meta["chat_template"] == "capstan" and meta["parameter_count"] > 100_000
    assert any("nothing to partition" in ln for ln in lines)  # z3 on one process, said plainly


def test_full_finetuning(base_model: Path, tmp_path: Path) -> None:
    run(hparams.parse(_hp(base_model, tmp_path, FinetuningType="Full", LearningRate=0.003, Epoch=15,
                          GradientCheckPointing=False, GradientAccumulationSteps=2, BatchSize=2)), lambda _: None)
    assert answer(tmp_path / "model", "who are you?") == IDENTITY
    assert metadata.read(tmp_path / "model")["finetuning"]["type"] == "Full"


def test_overwrite_output_dir_rule(base_model: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    with pytest.raises(HyperparameterError, match="not empty; set ResumeFromCheckpoint to true"):
        run(hparams.parse(_hp(base_model, tmp_path, ResumeFromCheckpoint=False)), lambda _: None)
    run(hparams.parse(_hp(base_model, tmp_path, ResumeFromCheckpoint=False, overwrite_output_dir=True, MaxSteps=2,
                          Step=1)), lambda _: None)
    assert not (tmp_path / "out" / "old.txt").exists()
    assert [n for n, _ in checkpoints.list_checkpoints(tmp_path / "out")] == [1, 2]


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes_to_the_same_weights(base_model: Path, tmp_path: Path) -> None:
    hp = _hp(base_model, tmp_path / "stopped", Step=5)
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(hp))
    argv = [sys.executable, "-m", "capstan_finetune", "--hyperparameters", str(hp_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "checkpoint: checkpoint-5" in line:
            proc.send_signal(signal.SIGTERM)  # as the agent does on eviction
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == STOPPED_EXIT, "".join(seen) + rest
    stopped_at = max(n for n, _ in checkpoints.list_checkpoints(tmp_path / "stopped" / "out"))
    assert 5 <= stopped_at < 60 and not (tmp_path / "stopped" / "model").exists()

    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resume: from checkpoint-{stopped_at}" in again.stdout

    run(hparams.parse(_hp(base_model, tmp_path / "straight", Step=5)), lambda _: None)
    import torch

    resumed, straight = _weights(tmp_path / "stopped" / "model"), _weights(tmp_path / "straight" / "model")
    assert resumed.keys() == straight.keys()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-5) for k in straight)


def test_bad_input_exits_2_with_the_reason_before_any_work(base_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "x.jsonl").write_text('{"conversation": [{"prompt": "p"}]}\n')
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(_hp(base_model, tmp_path, TrainDataPath=str(bad))))
    r = subprocess.run([sys.executable, "-m", "capstan_finetune", "--hyperparameters", str(hp_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"{bad / 'x.jsonl'}:1: conversation[0].response must be a string" in r.stderr
    assert not (tmp_path / "out").exists()


def test_z0_across_two_processes_is_ddp(base_model: Path, tmp_path: Path) -> None:
    """torchrun, 2 processes, gloo: each trains its share of the data; rank 0 checkpoints and exports."""
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(_hp(base_model, tmp_path, DeepspeedZeroStage="z0", Epoch=2, BatchSize=2, Step=2)))
    torchrun = Path(sys.executable).parent / "torchrun"
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "capstan_finetune",
                        "--hyperparameters", str(hp_file)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("plan: DeepspeedZeroStage=z0 with 2 processes: DistributedDataParallel") == 2
    assert r.stdout.count("train: 4 steps (2 epochs x 2)") == 2  # 8 samples, 2 per step per process
    assert [n for n, _ in checkpoints.list_checkpoints(tmp_path / "out")] == [2, 4]
    assert metadata.read(tmp_path / "model")["finetuning"]["steps"] == 4


def test_zero_stages_across_processes_are_refused_without_deepspeed(base_model: Path, tmp_path: Path) -> None:
    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps(_hp(base_model, tmp_path)))  # DeepspeedZeroStage z3, the default
    r = subprocess.run([sys.executable, "-m", "capstan_finetune", "--hyperparameters", str(hp_file)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "WORLD_SIZE": "2", "RANK": "0"})
    assert r.returncode == 2 and "DeepspeedZeroStage=z3 with 2 processes needs DeepSpeed" in r.stderr, r.stderr
