"""The model and tokenizer the engine serves, loaded once: prompts rendered and tokenized here."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from ..errors import ApiError

# Used only when the tokenizer has no chat template of its own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def cpu_budget() -> int:
    """CPUs this process may really use: its affinity, bounded by the cgroup's CPU quota (a sandbox's limit).
    torch's default counts the machine's cores, and on a limited or busy machine its threads then wait on
    each other far longer than they compute (a decode step 10x slower)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to this process")
    return choice


class LoadedModel:
    def __init__(self, model_dir: Path, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        dtype = "auto" if self.device.type == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model: Any = model.to(self.device).eval()
        self.config = self.model.config
        self.context_length = context_length(self.config, self.tokenizer)
        self.eos_ids = eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else next(iter(self.eos_ids), 0))
        # transformers 5 renamed past_key_values to cache (the old name warns until 5.40 removes it)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, ids: Any, mask: Any, positions: Any, cache: Any, last_only: bool = False) -> Any:
        """Logits for ``ids`` after ``cache`` (a DynamicCache, extended in place)."""
        extra = {"logits_to_keep": 1} if last_only else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_arg: cache}, **extra)
        return out.logits

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        template = None if getattr(self.tokenizer, "chat_template", None) else DEFAULT_CHAT_TEMPLATE
        try:
            ids: Any = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=True, chat_template=template,
                return_dict=False,
            )
        except Exception as e:  # the template's own refusals (e.g. roles out of order) are the caller's error
            raise ApiError(400, f"the model's chat template could not render these messages: {e}",
                           param="messages", code="invalid_messages") from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer(text, add_special_tokens=True)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def check_ids(self, ids: list[int]) -> None:
        vocab = int(self.config.vocab_size)
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"token ids must be in 0..{vocab - 1}", param="prompt", code="invalid_value")


def context_length(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", 0)
    return value if isinstance(value, int) and 0 < value < 1 << 24 else 2048


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
