"""Relaying an OpenAI stream: events pass on as they arrive (never held back for the rest), the usage
chunk is read for limits and metrics, and dropped when the gateway asked for it and the client did not.
"""

from __future__ import annotations

import json
import time
from typing import Any

_USAGE = b'"usage"'
_DECODER = json.JSONDecoder()
_MAX_PENDING = 1 << 20  # an event larger than this is passed on unparsed


class SseRelay:
    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self._pending = b""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    @property
    def usage_total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in what has arrived so far (the usage-only event removed if asked)."""
        now = time.perf_counter()
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            if len(data) > _MAX_PENDING:
                self._pending = b""
                return data
            self._pending = data
            return b""
        ready, self._pending = data[: end + 2], data[end + 2 :]
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        if _USAGE in ready:
            ready = self._take_usage(ready)
        return ready

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest

    def _take_usage(self, ready: bytes) -> bytes:
        kept = []
        for event in ready.split(b"\n\n"):
            if _USAGE in event and event.startswith(b"data:"):
                doc = _json(event[5:])
                if doc is not None and isinstance(doc.get("usage"), dict):
                    self._count(doc["usage"])
                    if self.strip_usage and not doc.get("choices"):
                        continue
                    if self.strip_usage:  # running usage on a content chunk the client did not ask for
                        doc.pop("usage", None)
                        event = b"data: " + json.dumps(doc, separators=(",", ":")).encode()
            kept.append(event)
        return b"\n\n".join(kept)

    def read_usage(self, body: bytes) -> None:
        """A non-streaming answer's ``usage``."""
        at = body.rfind(_USAGE)
        if at < 0:
            return
        try:  # the usage object alone (engines put it last): no need to parse the whole answer
            colon = body.index(b":", at + len(_USAGE))
            usage, _ = _DECODER.raw_decode(body[colon + 1 :].decode().lstrip())
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(usage, dict):
            self._count(usage)

    def _count(self, usage: dict[str, Any]) -> None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            self.prompt_tokens = prompt  # running usage is cumulative: the last one counts
        if isinstance(completion, int) and completion >= 0:
            self.completion_tokens = completion

    def ttft_ms(self, started: float) -> float | None:
        return (self.first_at - started) * 1000 if self.first_at is not None else None

    def tpot_ms(self) -> float | None:
        if self.first_at is None or self.last_at is None or self.completion_tokens < 2:
            return None
        return (self.last_at - self.first_at) * 1000 / (self.completion_tokens - 1)


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None
