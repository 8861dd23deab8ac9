"""The chat-template table (SPEC 6.6): which conversation family a model belongs to, from ``CONV_TEMPLATE``
(a family's name) or ``MODEL_ID`` (substring rules), first match wins.

vLLM renders chat with the tokenizer's own template; what a family adds is its tool-call parser and the
stop token ids the model must stop at (added to the generation config vLLM reads: ``__main__``).
``generate`` means a plain text-generation model: no chat template, completions only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    matches: tuple[tuple[str, ...], ...]  # MODEL_ID (lowercased) matches when it contains every part of one entry
    tool_parser: str | None = None  # vLLM 0.33's --tool-call-parser name
    stop_token_ids: tuple[int, ...] = ()
    aliases: tuple[str, ...] = ()
    chat: bool = True


TABLE: tuple[Family, ...] = (
    Family("generate", (), chat=False),
    Family("hunyuan", (("hunyuan",),), tool_parser="hunyuan_a13b"),
    Family("llama-3.2-vision", (("llama-3.2", "vision"), ("llama3.2", "vision"))),
    Family("llama-3.2", (("llama-3.2",), ("llama3.2",)), tool_parser="llama3_json"),
    Family("llama-3.1", (("llama-3.1",), ("llama3.1",)), tool_parser="llama3_json"),
    Family("qwen2.5", (("qwen2.5",), ("qwen2_5",)), tool_parser="hermes"),
    Family("baichuan2-chat", (("baichuan2", "chat"),)),
    Family("llama-2", (("llama-2",), ("llama2",))),
    Family("llama-3", (("llama-3",), ("llama3",)), stop_token_ids=(128001, 128009)),
    Family("qwen", (("qwen",),), stop_token_ids=(151643, 151644, 151645), aliases=("qwen-7b-chat",)),
)


class UnknownTemplate(ValueError):
    pass


def match(model_id: str = "", conv_template: str = "") -> Family | None:
    """The family for these settings; None when neither is set or MODEL_ID matches no rule (the
    tokenizer's template is used as is). An unknown CONV_TEMPLATE is an error."""
    if conv_template:
        name = conv_template.strip().lower()
        for family in TABLE:
            if name == family.name or name in family.aliases:
                return family
        names = ", ".join(f.name for f in TABLE)
        raise UnknownTemplate(f"CONV_TEMPLATE={conv_template!r} is not one of: {names}")
    model = model_id.strip().lower()
    if not model:
        return None
    for family in TABLE:
        if any(all(part in model for part in parts) for parts in family.matches):
            return family
    return None
