"""The fine-tuning run: validate everything, load the base model, train (LoRA or Full), checkpoint every
``Step`` steps and when asked to stop, resume from the newest checkpoint, export a servable model."""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import chat, checkpoints, data, metadata
from .hparams import Config, HyperparameterError
from .parallel import Plan, deepspeed_available, make_plan
from .tinygpt import pad_batch

Log = Callable[[str], None]
STOPPED_EXIT = 143  # asked to stop (SIGTERM): a checkpoint was saved first


class Stopped(Exception):
    """SIGTERM arrived (an eviction or a user stop); the newest state is in a checkpoint."""


@dataclass
class Encoded:
    ids: list[int]
    learn: list[bool]


def encode(tokenizer: Any, conv: chat.Conversation, max_len: int) -> Encoded:
    ids: list[int] = []
    learn: list[bool] = []
    for text, trained in chat.segments(conv):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        learn += [trained] * len(piece)
    return Encoded(ids[:max_len], learn[:max_len])


def world() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) for one process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run(cfg: Config, log: Log = print) -> Path:
    """Train and export; returns the model dir. Raises HyperparameterError / data.DataError /
    parallel.PlanError before any work on bad input, Stopped after saving a checkpoint on SIGTERM."""
    import torch

    rank, world_size = world()
    plan = make_plan(cfg.zero_stage, cfg.tp_size, cfg.pp_size, world_size, torch.cuda.is_available(),
                     deepspeed_available())
    for note in plan.notes:
        log(f"plan: {note}")
    if not cfg.use_tilearn:
        log("plan: UseTilearn=false (no vendor acceleration library here either way)")
    samples = data.load(cfg.data_path)
    log(f"data: {len(samples)} samples from {', '.join(str(f) for f in data.data_files(cfg.data_path))}")
    if not (cfg.model_path / "config.json").is_file():
        raise HyperparameterError(f"PretrainModelPath {cfg.model_path} holds no model (no config.json)")
    resume_from = checkpoints.prepare_output_dir(cfg) if rank == 0 else None
    if plan.strategy == "ddp":
        torch.distributed.init_process_group(plan.backend)
        resume_from = _broadcast_path(resume_from)
    try:
        return _train(cfg, plan, samples, resume_from, rank, log)
    finally:
        if plan.strategy == "ddp":
            torch.distributed.destroy_process_group()


def _broadcast_path(p: Path | None) -> Path | None:
    import torch

    box = [str(p) if p else ""]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] else None


def _train(cfg: Config, plan: Plan, samples: list[chat.Conversation], resume_from: Path | None, rank: int,
           log: Log) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
    model: Any = AutoModelForCausalLM.from_pretrained(cfg.model_path)
    context = int(getattr(model.config, "n_positions", 0) or getattr(model.config, "max_position_embeddings", 0) or 0)
    max_len = min(cfg.max_sequence_length, context) if context else cfg.max_sequence_length
    if max_len < cfg.max_sequence_length:
        log(f"plan: MaxSequenceLength {cfg.max_sequence_length} is beyond the model's context; truncating at {max_len}")
    encoded = [encode(tokenizer, s, max_len) for s in samples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
    if cfg.finetuning_type == "Lora":
        from peft import LoraConfig, get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_rank, lora_alpha=int(cfg.lora_alpha), lora_dropout=cfg.lora_dropout, target_modules="all-linear",
            task_type="CAUSAL_LM",
        ))
    device = _device()
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(f"model: {cfg.finetuning_type}, {sum(p.numel() for p in trainable):,} trainable of "
        f"{metadata.parameter_count(model):,} parameters")
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    step, epoch, micro = 0, 0, 0
    if resume_from is not None:
        state = checkpoints.load(resume_from, model, optimizer)
        step, epoch, micro = int(state["step"]), int(state["epoch"]), int(state["micro"])
        log(f"resume: from {resume_from.name} (step {step}, epoch {epoch + 1})")
    forward: Any = model
    if plan.strategy == "ddp":
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    per_epoch_micro = math.ceil(len(encoded) / (cfg.batch_size * plan.world_size))
    per_epoch = math.ceil(per_epoch_micro / cfg.gradient_accumulation_steps)
    total = cfg.epochs * per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * per_epoch)
    log(f"train: {total} steps ({cfg.epochs} epochs x {per_epoch}), checkpoint every {cfg.checkpoint_every}")

    stop = {"asked": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
    model.train()
    started, first_step = time.monotonic(), step
    try:
        while step < total and epoch < cfg.epochs:
            order = list(range(len(encoded)))
            random.Random(cfg.seed + epoch).shuffle(order)  # noqa: S311 - reproducible order
            mine = order[plan_rank(plan, rank)::plan.world_size]
            batches = [mine[i:i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
            while micro < len(batches) and step < total:
                accum = batches[micro:micro + cfg.gradient_accumulation_steps]
                for b in accum:
                    ids, labels, mask = (t.to(device) for t in pad_batch(
                        [encoded[i].ids for i in b], pad_id, [encoded[i].learn for i in b]))
                    loss = forward(input_ids=ids, attention_mask=mask, labels=labels).loss / len(accum)
                    loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                micro += len(accum)
                step += 1
                end_of_epoch = micro >= len(batches)
                if end_of_epoch:
                    epoch, micro = epoch + 1, 0
                if step % 10 == 0 or step == total:
                    rate = (step - first_step) / max(time.monotonic() - started, 1e-9)
                    log(f"step {step}/{total} epoch {min(epoch + 1, cfg.epochs)} loss {loss.item() * len(accum):.4f} "
                        f"({rate:.1f} steps/s)")
                if step % cfg.checkpoint_every == 0 or stop["asked"]:
                    if rank == 0:
                        saved = checkpoints.save(cfg.output_dir, step, model, optimizer,
                                                 {"epoch": epoch, "micro": micro})
                        log(f"checkpoint: {saved.name}")
                    if stop["asked"]:
                        raise Stopped(f"stopped at step {step}; resume from checkpoint-{step}")
                if end_of_epoch:
                    break  # the next epoch has its own order
    finally:
        signal.signal(signal.SIGTERM, previous)
    if rank == 0:
        export(cfg, model, tokenizer, step, log)
    return cfg.model_dir


def _device() -> Any:
    """This process's CUDA device (torchrun's LOCAL_RANK) where CUDA is present, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


def plan_rank(plan: Plan, rank: int) -> int:
    return rank if plan.strategy == "ddp" else 0


def export(cfg: Config, model: Any, tokenizer: Any, steps: int, log: Log) -> None:
    """The final model in Hugging Face layout, servable as is (LoRA merged into the base weights)."""
    if cfg.finetuning_type == "Lora":
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.eval()
    cfg.model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cfg.model_dir)
    tokenizer.save_pretrained(cfg.model_dir)
    base = metadata.read(cfg.model_path)
    metadata.write(
        cfg.model_dir, framework="pytorch", task_type="text-generation",
        base_model=str(base.get("name") or cfg.model_path.name), chat_template=str(base.get("chat_template") or ""),
        parameter_count=metadata.parameter_count(model), made_by="capstan_finetune",
        finetuning={"type": cfg.finetuning_type, "steps": steps, "lora_merged": cfg.finetuning_type == "Lora",
                    "hyperparameters": cfg.raw, "data": data_digests(cfg.data_path)},
    )
    log(f"model: saved to {cfg.model_dir}")


def data_digests(path: Path) -> dict[str, str]:
    """sha256 of each data file, for the model's lineage."""
    out = {}
    for f in data.data_files(path):
        out[f.name if path.is_file() else str(f.relative_to(path))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out
