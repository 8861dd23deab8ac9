"""OpenAI response bodies and stream chunks (shapes as OpenAI's published schemas have them)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    """One API call being answered: its kind, ids and what every choice has produced so far."""

    chat: bool
    model: str
    choices: int
    prompt_tokens: int
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    texts: list[str] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.id = self.id or ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.texts = [""] * self.choices
        self.finish = [None] * self.choices
        self.tokens = [0] * self.choices

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def usage(self) -> dict[str, int]:
        completion = sum(self.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def body(self) -> dict[str, Any]:
        if self.chat:
            choices: list[dict[str, Any]] = [
                {"index": i, "message": {"role": "assistant", "content": t, "refusal": None}, "logprobs": None,
                 "finish_reason": f} for i, (t, f) in enumerate(zip(self.texts, self.finish, strict=True))]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                       for i, (t, f) in enumerate(zip(self.texts, self.finish, strict=True))]
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "usage": self.usage()}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None,
              with_usage: bool = False) -> bytes:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                                "created": self.created, "model": self.model, "choices": choices}
        if with_usage:
            body["usage"] = usage
        return sse(body)

    def role_chunks(self, with_usage: bool) -> list[bytes]:
        if not self.chat:
            return []
        return [self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}], with_usage=with_usage) for i in range(self.choices)]

    def delta_chunk(self, index: int, text: str, finish: str | None, with_usage: bool,
                    usage: dict[str, int] | None = None) -> bytes:
        if self.chat:
            delta = {"content": text} if text else {}
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
        return self.chunk([choice], usage=usage, with_usage=with_usage)


def sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
