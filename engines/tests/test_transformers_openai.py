"""The transformers engine through the official openai SDK, every body and chunk validated against
OpenAI's published schemas."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

EngineProcess = Any  # conftest.EngineProcess

CHAT = [{"role": "user", "content": "who are you?"}]


@pytest.fixture
def client(engine: EngineProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0)


def raw(engine: EngineProcess, path: str, body: Any) -> httpx.Response:
    return httpx.post(engine.url + path, json=body, timeout=60)


def test_chat(client: openai.OpenAI, engine: EngineProcess, validate: Any) -> None:
    r = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=40)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "A tokenizer turns text into numbers the model reads."  # as trained
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    body = raw(engine, "/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 8}).json()
    validate("CreateChatCompletionResponse", body)


def test_chat_stream_with_usage(client: openai.OpenAI, engine: EngineProcess, validate: Any) -> None:
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "A tokenizer turns text into numbers the model reads."
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(
        [c for c in chunks if c.choices and c.choices[0].delta.content]) + 1  # + the end token, not shown
    with httpx.stream("POST", engine.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        frames = [ln[len("data: "):] for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    import json

    for frame in frames[:-1]:
        validate("CreateChatCompletionStreamResponse", json.loads(frame))


def test_stream_with_running_usage(engine: EngineProcess, validate: Any) -> None:
    """vLLM's continuous_usage_stats: every content chunk carries the usage so far (what a gateway counts for a
    stream its caller abandons)."""
    import json

    with httpx.stream("POST", engine.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": CHAT, "stream": True, "temperature": 0, "max_tokens": 6, "ignore_eos": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}) as resp:
        chunks = [json.loads(ln[6:]) for ln in resp.iter_lines() if ln.startswith("data: {")]
    for c in chunks:
        validate("CreateChatCompletionStreamResponse", c)
    running = [c["usage"]["completion_tokens"] for c in chunks if c["choices"] and c["usage"]]
    assert running == sorted(running) and running[-1] == 6
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_completions(client: openai.OpenAI, engine: EngineProcess, validate: Any) -> None:
    r = client.completions.create(model="tiny", prompt="The model", max_tokens=12, temperature=0)
    assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens <= 12
    body = raw(engine, "/v1/completions", {"model": "tiny", "prompt": ["The model", "A"], "max_tokens": 5}).json()
    validate("CreateCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    streamed = list(client.completions.create(model="tiny", prompt="The model", max_tokens=12, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    # OpenAI publishes no stream schema for completions: chunks are CreateCompletionResponse bodies, except the
    # null finish_reason OpenAI itself sends before the last chunk
    for c in streamed:
        body = c.model_dump(exclude_none=True)
        body["choices"] = [{**ch, "logprobs": None, "finish_reason": ch.get("finish_reason", "length")}
                           for ch in body["choices"]]
        validate("CreateCompletionResponse", body)


def test_token_id_prompt(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt=[12, 40, 33], max_tokens=3, temperature=0)
    assert r.usage is not None and r.usage.prompt_tokens == 3 and r.usage.completion_tokens <= 3


def test_models(client: openai.OpenAI, engine: EngineProcess, validate: Any) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    validate("ListModelsResponse", httpx.get(engine.url + "/v1/models").json())
    validate("Model", httpx.get(engine.url + "/v1/models/tiny").json())
    assert client.models.retrieve("tiny").id == "tiny"


def test_n_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=CHAT, n=3, temperature=1.0, seed=7, max_tokens=10)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage is not None and r.usage.completion_tokens >= 3
    streamed = list(client.chat.completions.create(model="tiny", messages=CHAT, n=2, temperature=0, stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in streamed if c.choices and c.choices[0].index == i)
             for i in (0, 1)]
    assert texts[0] == texts[1] == "A tokenizer turns text into numbers the model reads."


def test_stop_sequences(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0).choices[0].message.content
    assert full and " into" in full
    r = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, stop=[" into", "zzz"])
    assert r.choices[0].message.content == full[: full.index(" into")]
    assert r.choices[0].finish_reason == "stop"
    streamed = list(client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, stop=" into",
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index(" into")]


def test_seed_reproducible(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        r = client.completions.create(model="tiny", prompt="The", temperature=1.5, top_p=0.95, seed=seed,
                                      max_tokens=24)
        return r.choices[0].text

    assert ask(11) == ask(11)
    assert len({ask(s) for s in range(5)}) > 1  # the seed does change the sample


def test_max_tokens_and_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_completion_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage is not None and r.usage.completion_tokens == 3


def test_errors(client: openai.OpenAI, engine: EngineProcess, validate: Any) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=CHAT)
    assert nf.value.code == "model_not_found"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"messages": []}, "messages"),
        ({"messages": CHAT, "temperature": 5}, "temperature"),
        ({"messages": CHAT, "top_p": 0}, "top_p"),
        ({"messages": CHAT, "n": 0}, "n"),
        ({"messages": CHAT, "max_tokens": "many"}, "max_tokens"),
        ({"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": CHAT, "max_tokens": 100000}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0]"),
        ({"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": CHAT, "logprobs": True}, "logprobs"),
    ]
    for body, param in bad:
        r = raw(engine, "/v1/chat/completions", {"model": "tiny", **body})
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param
        validate("ErrorResponse", r.json())
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 400}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=[999999])
    for status, r in [
        (400, httpx.post(engine.url + "/v1/completions", content=b"{not json")),
        (400, httpx.post(engine.url + "/v1/completions", content=b"[1, 2]")),
        (413, httpx.post(engine.url + "/v1/completions", content=b"x" * (5 * 1024 * 1024))),
        (404, httpx.get(engine.url + "/v2/nothing")),
        (405, httpx.get(engine.url + "/v1/chat/completions")),
    ]:
        assert r.status_code == status, r.text
        validate("ErrorResponse", r.json())


def test_unknown_fields_tolerated(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, user="u-1",
                                       extra_body={"some_vendor_field": 1}, presence_penalty=0)
    assert r.choices
