"""Ask a chat model a question through ``transformers`` directly (greedy, deterministic): how the flow
checks a fine-tuned model answers as trained until online services serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def answer(model_dir: Path, prompt: str, system: str = "", max_new_tokens: int = 48) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    inputs: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)).strip()
