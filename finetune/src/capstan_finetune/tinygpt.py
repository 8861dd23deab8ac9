"""The project's own base model: a tiny GPT-2-style causal LM and a byte-level BPE tokenizer, trained in
seconds on text this package ships (``assets/``), saved in Hugging Face layout.

Nothing can be downloaded from a model hub here, so the fine-tuning flow (and later online services)
start from this. Building is one cached step: the directory is named after a hash of everything that
decides its content (the shipped text, the settings, this file), built in a temporary directory and
renamed into place, so concurrent builders and re-runs reuse one result.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import chat, metadata
from .files import make_world_readable, readable_dirs

NAME = "capstan-tiny-gpt"
ASSETS = Path(__file__).parent / "assets"
SETTINGS: dict[str, Any] = {
    "vocab_size": 600, "n_positions": 256, "n_embd": 96, "n_layer": 2, "n_head": 4,
    "steps": 200, "batch_size": 12, "learning_rate": 3e-3, "seed": 0,
}
_DONE = ".complete"

Progress = Callable[[str], None]


def cache_key(settings: dict[str, Any] | None = None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings or SETTINGS, sort_keys=True).encode())
    for f in sorted(ASSETS.iterdir()):
        if f.name in ("corpus.txt", "conversations.jsonl"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(Path(chat.__file__).read_bytes())
    return h.hexdigest()[:16]


def ensure_base_model(root: Path, progress: Progress = lambda _: None) -> Path:
    """The tiny base model under ``root`` (``<root>/capstan-tiny-gpt-<key>``), built if missing."""
    dest = root / f"{NAME}-{cache_key()}"
    if (dest / _DONE).exists():
        progress(f"base model cached at {dest}")
        return dest
    readable_dirs(root)
    tmp = root / f".{dest.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        build(tmp, progress)
        (tmp / _DONE).write_text("")
        make_world_readable(tmp)  # every sandbox reads it
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / _DONE).exists():  # another builder won the race: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def training_texts() -> list[str]:
    """The shipped prose lines, and the shipped conversations rendered with the chat template."""
    from .data import load_file

    lines = [ln.strip() for ln in (ASSETS / "corpus.txt").read_text().splitlines() if ln.strip()]
    convs = load_file(ASSETS / "conversations.jsonl")
    return lines + ["".join(text for text, _ in chat.segments(c)) for c in convs]


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=chat.SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=chat.END, eos_token=chat.END, pad_token=chat.PAD,
        additional_special_tokens=[chat.SYSTEM, chat.USER, chat.ASSISTANT],
    )
    fast.chat_template = chat.CHAT_TEMPLATE
    fast.model_max_length = int(SETTINGS["n_positions"])
    return fast


def build(dest: Path, progress: Progress = lambda _: None) -> None:
    """Train the tokenizer and the model on the shipped text and save both to ``dest``."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    s = SETTINGS
    texts = training_texts()
    progress(f"training a byte-level BPE tokenizer on {len(texts)} shipped texts")
    tokenizer = build_tokenizer(texts, int(s["vocab_size"]))
    end_id = tokenizer.convert_tokens_to_ids(chat.END)
    pad_id = tokenizer.convert_tokens_to_ids(chat.PAD)
    torch.manual_seed(int(s["seed"]))
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=s["n_positions"], n_embd=s["n_embd"], n_layer=s["n_layer"],
        n_head=s["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=end_id,
        eos_token_id=end_id, pad_token_id=pad_id,
    )
    model = GPT2LMHeadModel(config)
    encoded = [tokenizer(t)["input_ids"][: s["n_positions"] - 1] + [end_id] for t in texts]
    opt = torch.optim.AdamW(model.parameters(), lr=float(s["learning_rate"]))
    rng = random.Random(int(s["seed"]))  # noqa: S311 - a reproducible data order, not a secret
    model.train()
    steps = int(s["steps"])
    progress(f"training the {metadata.parameter_count(model):,}-parameter model for {steps} steps")
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(int(s["batch_size"]))]
        ids, labels, mask = pad_batch(batch, pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if (step + 1) % 50 == 0:
            progress(f"step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=end_id, pad_token_id=pad_id, bos_token_id=end_id, max_new_tokens=48, do_sample=False,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    metadata.write(
        dest, name=NAME, framework="pytorch", task_type="text-generation", base_model="", chat_template="capstan",
        parameter_count=metadata.parameter_count(model), made_by="capstan_finetune.tinygpt", cache_key=dest.name,
    )


def pad_batch(batch: list[list[int]], pad_id: int, label_masks: list[list[bool]] | None = None) -> tuple[Any, Any, Any]:
    """Right-padded input ids, labels (-100 where padded or masked out) and the attention mask."""
    import torch

    width = max(len(b) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        keep = label_masks[i] if label_masks is not None else [True] * len(seq)
        labels[i, : len(seq)] = torch.tensor([t if k else -100 for t, k in zip(seq, keep, strict=True)])
    return ids, labels, mask
