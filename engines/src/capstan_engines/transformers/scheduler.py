"""Continuous batching: one loop (its own thread, as torch blocks) steps every active sequence together.

Each turn: cancelled sequences leave; waiting requests join (their prompts prefilled together, their
first tokens sampled, their cache rows appended to the batch's); then one decode step feeds every active
sequence its last token in a single forward pass. Finished sequences leave between steps. Results go to
each request's asyncio queue through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ..protocol import SamplingParams
from .kv import BatchCache
from .model import LoadedModel
from .sampling import RowSampling, next_tokens
from .text import Detokenizer, StopText

log = logging.getLogger("capstan_engines.scheduler")


@dataclass(frozen=True)
class Emit:
    """What one choice produced in one step (``error`` set when the engine failed it)."""

    index: int
    text: str
    finish_reason: str | None
    tokens: int
    error: str | None = None


class Request:
    """One API request: a prompt and its ``n`` choices, each a sequence. Results arrive on ``events``."""

    def __init__(self, prompt_ids: list[int], params: list[SamplingParams], loop: asyncio.AbstractEventLoop,
                 events: asyncio.Queue[Emit] | None = None, first_index: int = 0, stream: bool = True) -> None:
        self.prompt_ids = prompt_ids
        self.stream = stream  # False: only the finished text is wanted (no per-token text unless stops need it)
        self.params = params
        self.loop = loop
        self.events: asyncio.Queue[Emit] = events if events is not None else asyncio.Queue()
        self.first_index = first_index  # several prompts of one API call share a queue; choices are numbered on
        self.cancelled = False

    def put(self, emit: Emit) -> None:
        emit = Emit(self.first_index + emit.index, emit.text, emit.finish_reason, emit.tokens, emit.error)
        self.loop.call_soon_threadsafe(self.events.put_nowait, emit)


@dataclass
class Sequence:
    request: Request
    index: int
    params: SamplingParams
    max_new: int
    sampling: RowSampling
    detok: Detokenizer
    stop: StopText
    generated: list[int] = field(default_factory=list)
    length: int = 0  # real tokens in the cache
    finished: bool = False

    @property
    def incremental(self) -> bool:
        """Whether text is needed as tokens come (a stream, or stop sequences to look for)."""
        return self.request.stream or bool(self.params.stop)


@dataclass
class Stats:
    decode_steps: int = 0
    prefill_steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finished_sequences: int = 0
    cancelled_sequences: int = 0


class Scheduler:
    def __init__(self, model: LoadedModel, max_batch: int = 16, max_waiting: int = 512) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.stats = Stats()
        self._waiting: deque[Request] = deque()
        self._active: list[Sequence] = []
        self._batch = BatchCache()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="capstan-scheduler", daemon=True)

    # -- the asyncio side ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def submit(self, request: Request) -> bool:
        """Queue a request; False when the waiting line is full."""
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                return False
            self._waiting.append(request)
            self._wake.notify()
        return True

    def cancel(self, request: Request) -> None:
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._stopping and not self._waiting and not self._active:
                        self._wake.wait()
                    if self._stopping:
                        break
                try:
                    self._turn()
                except Exception as e:  # a failed step fails the requests in it, never the engine
                    log.exception("engine step failed")
                    self._fail_all(f"the engine failed while generating: {type(e).__name__}: {e}")
        self._fail_all("the engine is shutting down")

    def _turn(self) -> None:
        self._drop_cancelled()
        joining = self._take_waiting()
        if joining:
            self._prefill(joining)
        if self._active:
            self._decode()

    def _drop_cancelled(self) -> None:
        with self._wake:
            for r in [r for r in self._waiting if r.cancelled]:
                self._waiting.remove(r)
                self.stats.cancelled_sequences += len(r.params)
        gone = [s for s in self._active if s.request.cancelled]
        if gone:
            self.stats.cancelled_sequences += len(gone)
            self._retain([i for i, s in enumerate(self._active) if not s.request.cancelled])

    def _take_waiting(self) -> list[Sequence]:
        joining: list[Sequence] = []
        with self._wake:
            while self._waiting and self.active + len(joining) + len(self._waiting[0].params) <= self.max_batch:
                request = self._waiting.popleft()
                joining.extend(self._sequence(request, i, p) for i, p in enumerate(request.params))
        return joining

    def _sequence(self, request: Request, index: int, params: SamplingParams) -> Sequence:
        room = self.model.context_length - len(request.prompt_ids)
        max_new = min(params.max_tokens or room, room)
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(self.model.device)
            seed = params.seed + index if params.seed is not None else random.getrandbits(63)  # noqa: S311
            generator.manual_seed(seed % (1 << 63))
        sampling = RowSampling(params.temperature, params.top_p, generator)
        return Sequence(request, index, params, max_new, sampling, Detokenizer(self.model.tokenizer),
                        StopText(params.stop))

    def _prefill(self, joining: list[Sequence]) -> None:
        from transformers import DynamicCache

        m = self.model
        width = max(len(s.request.prompt_ids) for s in joining)
        ids = torch.full((len(joining), width), m.pad_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for row, s in enumerate(joining):
            prompt = s.request.prompt_ids
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
            s.length = len(prompt)
        ids, mask = ids.to(m.device), mask.to(m.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=m.config)
        logits = m.forward(ids, mask, positions, cache, last_only=True)
        self.stats.prefill_steps += 1
        self.stats.prompt_tokens += sum(len(s.request.prompt_ids) for s in joining)
        tokens = next_tokens(logits[:, -1, :], [self._row_sampling(s) for s in joining])
        self._batch.join(cache, mask)
        self._active.extend(joining)
        self._advance(tokens, first_row=len(self._active) - len(joining))

    def _decode(self) -> None:
        m = self.model
        active = self._active
        ids = torch.tensor([[s.generated[-1]] for s in active], dtype=torch.long, device=m.device)
        positions = torch.tensor([[s.length] for s in active], dtype=torch.long, device=m.device)
        mask = self._batch.grow()
        logits = m.forward(ids, mask, positions, self._batch.cache)
        self.stats.decode_steps += 1
        for s in active:
            s.length += 1
        self._advance(next_tokens(logits[:, -1, :], [self._row_sampling(s) for s in active]), first_row=0)

    def _row_sampling(self, s: Sequence) -> RowSampling:
        early = not s.params.ignore_eos and len(s.generated) < s.params.min_tokens
        s.sampling.banned = tuple(self.model.eos_ids) if early else ()
        return s.sampling

    def _advance(self, tokens: list[int], first_row: int) -> None:
        """Record each row's new token, emit its text, and let finished sequences leave."""
        eos = self.model.eos_ids
        for s, token in zip(self._active[first_row:], tokens, strict=True):
            s.generated.append(token)
            self.stats.generated_tokens += 1
            finish, text = None, ""
            hit_eos = token in eos and not s.params.ignore_eos
            if not s.incremental:  # the whole text once, at the end
                if hit_eos or len(s.generated) >= s.max_new:
                    finish = "stop" if hit_eos else "length"
                    text = self.model.decode(s.generated[:-1] if hit_eos else s.generated)
            elif hit_eos:
                finish, text = "stop", s.stop.push(s.detok.flush(), final=True)
            else:
                text = s.stop.push(s.detok.add(token))
                if s.stop.stopped:
                    finish = "stop"
                elif len(s.generated) >= s.max_new:
                    finish, text = "length", text + s.stop.push(s.detok.flush(), final=True)
            if finish:
                s.finished = True
                self.stats.finished_sequences += 1
            if text or finish:
                s.request.put(Emit(s.index, text, finish, len(s.generated)))
        if any(s.finished for s in self._active):
            self._retain([i for i, s in enumerate(self._active) if not s.finished])

    def _retain(self, rows: list[int]) -> None:
        self._active = [self._active[i] for i in rows]
        self._batch.keep(rows)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for s in self._active:
            s.request.put(Emit(s.index, "", None, len(s.generated), error=message))
        for r in waiting:
            for i in range(len(r.params)):
                r.put(Emit(i, "", None, 0, error=message))
        self._active = []
        self._batch = BatchCache()


def snapshot(s: Scheduler) -> dict[str, Any]:
    return {**s.stats.__dict__, "active_sequences": s.active, "waiting_requests": s.waiting}
