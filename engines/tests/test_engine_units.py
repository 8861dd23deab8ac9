"""The engine's pure parts: request parsing, stop sequences, incremental detokenizing, the batched KV cache
(joining and leaving rows changes no row's logits) and sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capstan_engines.errors import ApiError
from capstan_engines.protocol import parse_chat, parse_completion
from capstan_engines.transformers.kv import BatchCache
from capstan_engines.transformers.model import LoadedModel
from capstan_engines.transformers.sampling import RowSampling, next_tokens
from capstan_engines.transformers.text import Detokenizer, StopText

CHAT = [{"role": "user", "content": "hi"}]


def test_parse_chat() -> None:
    r = parse_chat({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                                 {"type": "text", "text": "b"}]},
                                              *CHAT],
                    "max_tokens": 5, "max_completion_tokens": 7, "stop": "x", "seed": 3, "n": 2, "stream": True,
                    "stream_options": {"include_usage": True}, "unknown": {"tolerated": True}})
    assert r.messages[0] == {"role": "system", "content": "ab"}
    assert r.sampling.max_tokens == 7  # max_completion_tokens wins, as OpenAI documents
    assert r.sampling.stop == ("x",) and r.sampling.seed == 3 and r.n == 2 and r.include_usage
    assert r.sampling.temperature == 1.0 and r.sampling.top_p == 1.0


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": "hi"}, "messages"),
    ({"messages": CHAT, "seed": 1.5}, "seed"),
    ({"messages": CHAT, "stream": "yes"}, "stream"),
    ({"messages": CHAT, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"messages": CHAT, "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": CHAT, "temperature": True}, "temperature"),
    ({"messages": CHAT, "stop": [""]}, "stop"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": CHAT, "model": 3}, "model"),
])
def test_parse_chat_refusals(body: dict[str, object], param: str) -> None:
    with pytest.raises(ApiError) as e:
        parse_chat(body)
    assert e.value.status == 400 and e.value.param == param


def test_parse_completion() -> None:
    assert parse_completion({"prompt": "a"}).prompts == ["a"]
    assert parse_completion({"prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert parse_completion({"prompt": [1, 2]}).prompts == [[1, 2]]
    assert parse_completion({"prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    assert parse_completion({"prompt": "a"}).sampling.max_tokens == 16  # OpenAI's default for completions
    for bad in ({"prompt": []}, {"prompt": [1, "a"]}, {"prompt": [True]}, {"prompt": "a", "echo": True},
                {"prompt": "a", "best_of": 3}, {"prompt": "a", "logprobs": 2}):
        with pytest.raises(ApiError):
            parse_completion(bad)


def test_stop_text_holds_possible_stops() -> None:
    s = StopText(("END", "##"))
    assert s.push("hello E") == "hello "  # "E" may start END
    assert s.push("N") == ""
    assert s.push("X more #") == "ENX more "
    assert s.push("#tail") == ""
    assert s.stopped and s.text == "hello ENX more "
    assert StopText(()).push("abc") == "abc"
    t = StopText(("zz",))
    assert t.push("ab z") == "ab " and t.push("", final=True) == "z"


def test_detokenizer_streams_what_decode_gives(tiny_model: Path) -> None:
    m = LoadedModel(tiny_model)
    text = "héllo wörld — ünïcode ✓ and plain words"
    ids = m.encode(text)
    d = Detokenizer(m.tokenizer)
    assert "".join(d.add(t) for t in ids) + d.flush() == m.decode(ids)
    assert all("\ufffd" not in d2 for d2 in (Detokenizer(m.tokenizer).add(t) for t in ids))


@pytest.fixture(scope="session")
def tiny_llama(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Llama (rotary positions, grouped-query attention) with the tiny model's tokenizer."""
    import shutil

    from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

    from capstan_engines.testing import TOKENIZER_FILES

    dest = tmp_path_factory.mktemp("llama")
    tiny = GPT2Config.from_pretrained(tiny_model)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tiny.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tiny.bos_token_id, eos_token_id=tiny.eos_token_id,
                         pad_token_id=tiny.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(dest)
    for name in TOKENIZER_FILES:
        if (tiny_model / name).exists():
            shutil.copy(tiny_model / name, dest / name)
    return dest


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_cache_rows_join_and_leave(arch: str, tiny_model: Path, tiny_llama: Path) -> None:
    """Greedy next-token logits of a sequence are the same alone and in a batch that rows join and leave."""
    m = LoadedModel(tiny_model if arch == "gpt2" else tiny_llama)
    from transformers import DynamicCache

    prompts = [m.encode("The model reads text"), m.encode("Hi"), m.encode("A much longer prompt than the others")]

    def prefill(batch: BatchCache, rows: list[list[int]]) -> torch.Tensor:
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), m.pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, p in enumerate(rows):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        cache = DynamicCache(config=m.config)
        with torch.inference_mode():
            logits = m.forward(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache, last_only=True)
        batch.join(cache, mask)
        return logits[:, -1]

    def step(batch: BatchCache, tokens: list[int], positions: list[int]) -> torch.Tensor:
        mask = batch.grow()
        with torch.inference_mode():
            logits = m.forward(torch.tensor([[t] for t in tokens]), mask, torch.tensor([[p] for p in positions]),
                               batch.cache)
        return logits[:, -1]

    alone = BatchCache()
    first = prefill(alone, [prompts[0]])
    t0 = int(first.argmax())
    expected = step(alone, [t0], [len(prompts[0])])[0]

    batch = BatchCache()
    prefill(batch, [prompts[1]])
    got_first = prefill(batch, [prompts[0], prompts[2]])  # two more rows join, wider than the first
    assert torch.allclose(got_first[0], first[0], atol=1e-4)
    batch.keep([1, 2])  # the first row leaves; its padding columns are trimmed
    assert batch.rows == 2
    got = step(batch, [t0, 5], [len(prompts[0]), len(prompts[2])])[0]
    assert torch.allclose(got, expected, atol=1e-4)


def test_sampling() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    assert next_tokens(logits, [RowSampling(0.0, 1.0, None), RowSampling(0.0, 1.0, None)]) == [1, 0]
    assert next_tokens(logits[:1], [RowSampling(0.0, 1.0, None, banned=(1,))]) == [2]

    def sample(seed: int, top_p: float) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [next_tokens(logits[:1], [RowSampling(1.0, top_p, g)])[0] for _ in range(50)]

    assert sample(1, 1.0) == sample(1, 1.0)
    assert set(sample(2, 1.0)) > {1}  # temperature 1 reaches the other tokens
    assert set(sample(3, 0.5)) == {1}  # the nucleus is the top token alone


async def test_a_failing_step_fails_its_requests_not_the_engine(tiny_model: Path) -> None:
    import asyncio

    from capstan_engines.protocol import SamplingParams
    from capstan_engines.transformers.scheduler import Request, Scheduler

    m = LoadedModel(tiny_model)
    real = m.forward
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:  # the first decode step
            raise RuntimeError("injected: out of memory")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    m.forward = flaky  # type: ignore[method-assign]
    s = Scheduler(m)
    s.start()
    try:
        loop = asyncio.get_running_loop()

        async def run() -> tuple[str, str | None]:
            r = Request(m.chat_prompt([{"role": "user", "content": "who are you?"}], None),
                        [SamplingParams(max_tokens=20, temperature=0)], loop, stream=False)
            assert s.submit(r)
            text = ""
            while True:
                e = await r.events.get()
                text += e.text
                if e.error or e.finish_reason:
                    return text, e.error

        _, error = await run()
        assert error is not None and "injected: out of memory" in error
        text, error = await run()
        assert error is None and text == "A tokenizer turns text into numbers the model reads."
        for _ in range(500):  # the finished row leaves right after its last result is sent
            if s.active == 0:
                break
            await asyncio.sleep(0.01)
        assert s.active == 0
    finally:
        s.stop()
