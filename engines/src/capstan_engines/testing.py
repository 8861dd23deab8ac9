"""Models for tests and benchmarks: the project's tiny GPT (built by ``capstan_finetune.tinygpt``), widened.

``widen`` keeps the tiny model's tokenizer and architecture (GPT-2) and makes a bigger, randomly
initialised model of it: big enough that a decode step costs what a real model's does on a CPU (so
benchmarks mean something) and long enough that a generation can be watched while it runs (tests).
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def widen(tiny_dir: Path, dest: Path, *, n_embd: int = 512, n_layer: int = 8, n_head: int = 8,
          n_positions: int = 4096, seed: int = 0) -> Path:
    """A GPT-2 of the given shape with the tiny model's tokenizer, saved in Hugging Face layout at ``dest``
    (reused when already there)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if (dest / "config.json").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tiny = GPT2Config.from_pretrained(tiny_dir)
    config = GPT2Config(vocab_size=tiny.vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id,
                        pad_token_id=tiny.pad_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).eval().save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (tiny_dir / name).exists():
            shutil.copy(tiny_dir / name, tmp / name)
    tmp.rename(dest)
    return dest
