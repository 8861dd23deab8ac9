"""Continuous batching, cancellation and draining, observed through the engine's own counters
(/metrics): counts, never timings."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai

CHAT = [{"role": "user", "content": "who are you?"}]
QUESTIONS = ["who are you?", "hello", "what is capstan?", "tell me about rivers"]


def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


async def test_concurrent_requests_share_decode_steps(start_engine: Any, tiny_model: Path) -> None:
    engine = start_engine("transformers", ["--model-dir", str(tiny_model), "--served-model-name", "tiny"]).wait_ready()
    client = openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="x", max_retries=0)
    tokens = 40

    async def one(q: str) -> Any:
        return await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], max_tokens=tokens, temperature=0,
            extra_body={"ignore_eos": True})

    before = engine.metrics()
    results = await asyncio.gather(*[one(q) for q in QUESTIONS])
    after = engine.metrics()
    generated = sum(r.usage.completion_tokens for r in results)
    steps = after["capstan_engine_decode_steps_total"] - before["capstan_engine_decode_steps_total"]
    assert generated == tokens * len(QUESTIONS)
    # one request alone needs tokens - 1 decode steps (its first token comes from the prefill); served one at a
    # time the four would need 4 x 39 = 156; batched, they share steps
    assert steps < generated / 2, (steps, generated)


async def test_batched_answers_equal_single_answers(start_engine: Any, tiny_model: Path) -> None:
    """Rows joining and leaving the batch (different prompt lengths, left padding) change no greedy answer."""
    engine = start_engine("transformers", ["--model-dir", str(tiny_model), "--served-model-name", "t"]).wait_ready()
    client = openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="x", max_retries=0)

    async def one(q: str, n: int) -> str:
        r = await client.chat.completions.create(model="t", messages=[{"role": "user", "content": q}],
                                                 max_tokens=n, temperature=0)
        return r.choices[0].message.content or ""

    single = [await one(q, 30) for q in QUESTIONS]
    together = await asyncio.gather(*[one(q, 30) for q in QUESTIONS], *[one(q, 5) for q in QUESTIONS])
    assert list(together[: len(QUESTIONS)]) == single


async def test_requests_join_a_running_batch(start_engine: Any, wide_model: Path) -> None:
    """Requests arriving while a long generation runs join it between steps: their tokens come from the
    same decode steps, not after it."""
    engine = start_engine("transformers", ["--model-dir", str(wide_model), "--served-model-name", "w"]).wait_ready()
    client = openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="x", max_retries=0)
    long_tokens, short_tokens = 300, 20
    before = engine.metrics()

    async def ask(tokens: int) -> Any:
        return await client.completions.create(model="w", prompt="The river", max_tokens=tokens, temperature=0,
                                               extra_body={"ignore_eos": True})

    long = asyncio.create_task(ask(long_tokens))
    await asyncio.to_thread(wait_for, lambda: engine.metrics()["capstan_engine_active_sequences"] == 1, 60,
                            "the long generation to run")
    shorts = await asyncio.gather(*[ask(short_tokens) for _ in range(3)])
    assert not long.done()  # the short ones finished while the long one was still generating
    await long
    after = engine.metrics()
    steps = after["capstan_engine_decode_steps_total"] - before["capstan_engine_decode_steps_total"]
    assert all(s.usage.completion_tokens == short_tokens for s in shorts)
    assert steps < long_tokens  # every token of the short requests rode on the long one's decode steps
    assert after["capstan_engine_prefill_steps_total"] - before["capstan_engine_prefill_steps_total"] >= 2


def test_disconnect_cancels_the_sequence(start_engine: Any, wide_model: Path) -> None:
    engine = start_engine("transformers", ["--model-dir", str(wide_model), "--max-batch", "4"]).wait_ready()
    long = {"messages": CHAT, "max_tokens": 4000, "temperature": 0, "ignore_eos": True}

    def active() -> float:
        return engine.metrics()["capstan_engine_active_sequences"]

    # streaming: read one chunk, then close the connection
    with httpx.stream("POST", engine.url + "/v1/chat/completions", json={**long, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the response
        next(lines)
        wait_for(lambda: active() == 1, what="the stream's sequence to run")
    wait_for(lambda: active() == 0, what="the disconnected stream's sequence to leave")

    # non-streaming: give up before the answer
    async def abandon() -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            task = asyncio.create_task(c.post(engine.url + "/v1/chat/completions", json=long))
            await asyncio.to_thread(wait_for, lambda: active() == 1, 60, "the request's sequence to run")
            task.cancel()

    asyncio.run(abandon())
    wait_for(lambda: active() == 0, what="the abandoned request's sequence to leave")
    m = engine.metrics()
    assert m["capstan_engine_cancelled_sequences_total"] == 2
    assert m["capstan_engine_generated_tokens_total"] < 2 * 4000


def test_sigterm_drains_in_flight_then_exits_zero(start_engine: Any, wide_model: Path) -> None:
    engine = start_engine("transformers", ["--model-dir", str(wide_model), "--drain-seconds", "60"]).wait_ready()
    body = {"messages": CHAT, "max_tokens": 80, "temperature": 0, "ignore_eos": True, "stream": True}

    with httpx.stream("POST", engine.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        engine.proc.send_signal(signal.SIGTERM)
        rest = [ln for ln in lines if ln.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in rest[-2]  # the in-flight stream ran to its end
    assert engine.proc.wait(60) == 0
    try:
        httpx.get(engine.url + "/health", timeout=2)
        raise AssertionError("still accepting after SIGTERM")
    except httpx.HTTPError:
        pass
