"""Property checks of the engine's edge (capstan_engines.protocol): whatever JSON a client sends —
NaN, infinities, huge or negative numbers, wrong types, nested junk — a body is either refused with a 400
that names a parameter, or accepted with every sampling value inside the range the engine can run."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capstan_engines.errors import ApiError
from capstan_engines.protocol import MAX_N, parse_chat, parse_completion

# what json.loads can produce (it accepts NaN and Infinity), weighted towards the awkward
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 0.0, 1.0, 2.0, 2.0000001, 1e308]),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=10)
FIELDS = ["model", "n", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p",
          "stop", "seed", "logprobs", "top_logprobs", "min_tokens", "ignore_eos", "tools"]
MESSAGES = st.one_of(JSON_VALUES, st.just([{"role": "user", "content": "hi"}]),
                     st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                     "content": JSON_VALUES}), max_size=3))
PROMPTS = st.one_of(JSON_VALUES, st.just("hi"), st.lists(st.integers(min_value=-5, max_value=1 << 40), max_size=3))


def _bodies(key: str, first: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda head, rest: {key: head, **rest}, first,
                     st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6))


def _check(parse: Any, body: dict[str, Any]) -> None:
    body = json.loads(json.dumps(body))  # what the engine's JSON decoder hands over (NaN survives)
    try:
        req = parse(body)
    except ApiError as e:
        assert e.status == 400 and e.param and e.message, (e.status, e.param, e.message)
        return
    s = req.sampling
    assert 1 <= req.n <= MAX_N
    assert math.isfinite(s.temperature) and 0.0 <= s.temperature <= 2.0
    assert math.isfinite(s.top_p) and 0.0 < s.top_p <= 1.0
    assert s.max_tokens is None or (isinstance(s.max_tokens, int) and s.max_tokens >= 1)
    assert s.seed is None or (isinstance(s.seed, int) and -(1 << 63) <= s.seed < (1 << 63))
    assert isinstance(s.min_tokens, int) and s.min_tokens >= 0
    assert all(isinstance(x, str) and x for x in s.stop)


@settings(max_examples=400, deadline=None)
@given(_bodies("messages", MESSAGES))
def test_a_chat_body_is_refused_naming_a_parameter_or_runs_in_range(body: dict[str, Any]) -> None:
    _check(parse_chat, body)


@settings(max_examples=400, deadline=None)
@given(_bodies("prompt", PROMPTS))
def test_a_completion_body_is_refused_naming_a_parameter_or_runs_in_range(body: dict[str, Any]) -> None:
    _check(parse_completion, body)


def test_nan_and_infinity_are_refused_by_name() -> None:
    for field, value in [("temperature", math.nan), ("top_p", math.inf), ("temperature", -math.inf),
                         ("top_p", math.nan)]:
        try:
            parse_chat(json.loads(json.dumps({"messages": [{"role": "user", "content": "x"}], field: value})))
        except ApiError as e:
            assert e.status == 400 and e.param == field
        else:
            raise AssertionError(f"{field}={value} was accepted")
