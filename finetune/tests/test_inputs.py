"""Hyperparameters, training data and the parallel plan are checked before any work, with messages a
user can act on (file and line numbers for data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capstan_finetune import data, hparams
from capstan_finetune.hparams import HyperparameterError
from capstan_finetune.parallel import PlanError, make_plan


def test_presets_have_the_spec_defaults() -> None:
    cfg = hparams.parse({})
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.checkpoint_every) == (2, 1, 1e-5, 750)
    assert (cfg.finetuning_type, cfg.max_sequence_length, cfg.gradient_accumulation_steps) == ("Lora", 2048, 1)
    assert cfg.use_tilearn and cfg.gradient_checkpointing and cfg.resume and not cfg.overwrite_output_dir
    assert (cfg.zero_stage, cfg.tp_size, cfg.pp_size) == ("z3", 1, 1)
    assert cfg.model_path == Path("/opt/ml/pretrain_model") and cfg.data_path == Path("/opt/ml/input/data/train")
    assert all(p.meaning for p in hparams.PRESETS)


def test_string_spellings_and_refusals() -> None:
    cfg = hparams.parse({"Epoch": "3", "UseTilearn": "false", "FinetuningType": "full", "LearningRate": "2e-4"})
    assert (cfg.epochs, cfg.use_tilearn, cfg.finetuning_type, cfg.learning_rate) == (3, False, "Full", 2e-4)
    for bad, words in [
        ({"Epochs": 2}, "unknown hyperparameter(s) Epochs"),
        ({"Epoch": 0}, "Epoch must be at least 1"),
        ({"BatchSize": "two"}, "BatchSize must be a whole number"),
        ({"FinetuningType": "QLora"}, "FinetuningType must be one of Lora, Full"),
        ({"DeepspeedZeroStage": "z1"}, "DeepspeedZeroStage must be one of z0"),
        ({"ResumeFromCheckpoint": "yes"}, "ResumeFromCheckpoint must be true or false"),
        ({"LearningRate": 0}, "LearningRate must be > 0"),
        ({"LearningRate": "nan"}, "LearningRate must be a finite number"),
    ]:
        with pytest.raises(HyperparameterError, match=words.replace("(", r"\(").replace(")", r"\)")):
            hparams.parse(bad)


def _write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(ln if isinstance(ln, bytes) else ln.encode() for ln in lines) + b"\n")
    return path


def test_data_files_are_merged_and_every_problem_named_with_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"system": "s", "conversation": [{"prompt": "p", "response": "r"}]})
    _write(tmp_path / "a.jsonl", [good, "", good])
    _write(tmp_path / "b.jsonl", [json.dumps({"conversation": [{"prompt": "q", "response": "r2"}, {"prompt": "x", "response": "y"}]})])
    (tmp_path / "README.txt").write_text("not data")
    samples = data.load(tmp_path)
    assert len(samples) == 3 and samples[2].turns[1].response == "y"

    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad / "c.jsonl", [
        good,
        "{not json",
        json.dumps({"conversation": []}),
        json.dumps({"conversation": [{"prompt": "p"}]}),
        b"\xff\xfe",
        json.dumps({"system": 1, "conversation": [{"prompt": "p", "response": "r"}]}),
        json.dumps({"conv": []}),
        json.dumps([1]),
        json.dumps({"conversation": [{"prompt": "p", "response": ""}]}),
    ])
    with pytest.raises(data.DataError) as e:
        data.load(bad)
    f = bad / "c.jsonl"
    assert e.value.problems == [
        f"{f}:2: not JSON (Expecting property name enclosed in double quotes at column 2)",
        f'{f}:3: conversation must be a non-empty list of {{"prompt": ..., "response": ...}}',
        f"{f}:4: conversation[0].response must be a string",
        f"{f}:5: not UTF-8 (byte 0 of the line)",
        f"{f}:6: system must be a string",
        f"{f}:7: unknown field(s) conv; a sample has only system and conversation",
        f'{f}:8: a sample must be a JSON object {{"system": ..., "conversation": [...]}}',
        f"{f}:9: conversation[0].response is empty: there is nothing to learn",
    ]
    assert str(e.value).startswith("invalid training data:\n")


def test_data_limits(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="holds no .jsonl file"):
        data.load(tmp_path)
    big = tmp_path / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(data.MAX_FILE_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(data.DataError, match="at most 200 MB"):
        data.load(tmp_path)
    with pytest.raises(data.DataError, match="no such file"):
        data.load(tmp_path / "missing")


def test_parallel_plan_maps_to_what_is_installed_or_refuses() -> None:
    one = make_plan("z3", 1, 1, world_size=1, cuda=False, has_deepspeed=False)
    assert one.strategy == "single" and "nothing to partition" in one.notes[0]
    assert "host memory already" in make_plan("z2_offload", 1, 1, 1, cuda=False, has_deepspeed=False).notes[0]
    ddp = make_plan("z0", 1, 1, world_size=2, cuda=False, has_deepspeed=False)
    assert (ddp.strategy, ddp.backend, ddp.world_size) == ("ddp", "gloo", 2)
    assert make_plan("z0", 1, 1, world_size=2, cuda=True, has_deepspeed=False).backend == "nccl"
    for args, words in [
        (("z3", 1, 1, 2, False, False), "needs DeepSpeed, which is not installed"),
        (("z2", 1, 1, 4, True, True), "does not drive it yet"),
        (("z3_offload", 1, 1, 1, True, False), "needs DeepSpeed"),
        (("z0", 2, 1, 1, False, False), "TilearnHybridTPSize=2: tensor parallelism"),
        (("z0", 1, 4, 1, False, False), "TilearnHybridPPSize=4: pipeline parallelism"),
    ]:
        with pytest.raises(PlanError, match=words):
            make_plan(*args)  # type: ignore[arg-type]


def test_staged_inputs_are_readable_by_any_uid_whatever_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's unprivileged uid copies the template and reads the model and data: a platform
    process running with umask 077 must not stage them behind a 0700 directory."""
    import os
    import stat

    from capstan_finetune import staging

    monkeypatch.setenv("CAPSTAN_MODEL_SHARE", str(tmp_path / "share"))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"conversation": [{"prompt": "p", "response": "r"}]}) + "\n")
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    old = os.umask(0o077)
    try:
        inputs = staging.task_inputs(model, data, {"Epoch": 1})
    finally:
        os.umask(old)
    assert inputs.hyperparameters["Epoch"] == 1 and inputs.command.endswith("exec python3 -m capstan_finetune")
    for p in [tmp_path / "share", *(tmp_path / "share").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & (0o005 if p.is_dir() else 0o004), f"{p} is {oct(mode)}"
    assert (Path(inputs.hyperparameters["TrainDataPath"]) / "d.jsonl").is_file()
    assert (Path(inputs.hyperparameters["PretrainModelPath"]) / "config.json").is_file()
