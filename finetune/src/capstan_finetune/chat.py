"""The conversation format every Capstan chat model shares: special tokens and the chat template.

The template is Jinja, stored in the tokenizer's config (``chat_template``), so ``transformers``'
``apply_chat_template`` and vLLM's OpenAI server render prompts exactly as training did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, SYSTEM, USER, ASSISTANT, END]
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}" + SYSTEM + "{% elif message['role'] == 'user' %}" + USER
    + "{% else %}" + ASSISTANT + "{% endif %}"
    "{{ message['content'] }}" + END + "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


@dataclass(frozen=True)
class Turn:
    prompt: str
    response: str


@dataclass(frozen=True)
class Conversation:
    """One training sample: an optional system text and one or more prompt/response turns."""

    system: str
    turns: tuple[Turn, ...]


def segments(conv: Conversation) -> list[tuple[str, bool]]:
    """The sample as text pieces, each with whether the model learns to produce it (responses and
    their end marker); the concatenation is what the chat template renders for the same messages."""
    out: list[tuple[str, bool]] = []
    if conv.system:
        out.append((SYSTEM + conv.system + END, False))
    for t in conv.turns:
        out.append((USER + t.prompt + END + ASSISTANT, False))
        out.append((t.response + END, True))
    return out


def render_prompt(system: str, history: Sequence[Turn], prompt: str) -> str:
    """The generation prompt for ``prompt`` after ``history`` (same text as the template with
    ``add_generation_prompt``)."""
    pieces = [text for text, _ in segments(Conversation(system, tuple(history)))]
    return "".join(pieces) + USER + prompt + END + ASSISTANT
