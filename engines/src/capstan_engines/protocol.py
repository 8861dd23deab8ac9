"""OpenAI request bodies turned into the engine's own requests, at the edge: every field the engine
honours is checked here (a bad one is a 400 naming it); unknown fields are tolerated, as OpenAI clients
send many. Fields follow the order of OpenAI's reference; extensions (vLLM's) are marked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_param

MAX_N = 16
MAX_STOP = 4
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None  # None: up to the end of the model's context
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # extensions (as vLLM names them)
    min_tokens: int = 0  # the end-of-sequence token is masked until this many tokens are generated
    ignore_eos: bool = False  # keep generating past the end-of-sequence token (benchmarks)


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool  # extension (vLLM's stream_options.continuous_usage_stats): usage on every chunk
    sampling: SamplingParams


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompts: list[str | list[int]]
    n: int
    stream: bool
    include_usage: bool
    continuous_usage: bool
    sampling: SamplingParams


def parse_chat(body: dict[str, Any]) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "'messages' must be a non-empty array of messages")
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise bad_param("tools", "'tools' must be an array of objects")
    _refuse_logprobs(body)
    stream, include_usage, continuous = _stream(body)
    return ChatRequest(
        model=_model(body), messages=[_message(i, m) for i, m in enumerate(messages)], tools=tools or None,
        n=_int(body, "n", 1, MAX_N, 1), stream=stream, include_usage=include_usage, continuous_usage=continuous,
        sampling=_sampling(body, ("max_completion_tokens", "max_tokens")),
    )


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    if body.get("echo"):
        raise bad_param("echo", "'echo' is not supported by this engine")
    if body.get("suffix"):
        raise bad_param("suffix", "'suffix' is not supported by this engine")
    if body.get("best_of") not in (None, 1):
        raise bad_param("best_of", "'best_of' is not supported by this engine")
    _refuse_logprobs(body)
    stream, include_usage, continuous = _stream(body)
    return CompletionRequest(
        model=_model(body), prompts=_prompts(body.get("prompt")), n=_int(body, "n", 1, MAX_N, 1), stream=stream,
        include_usage=include_usage, continuous_usage=continuous, sampling=_sampling(body, ("max_tokens",), default_max=16),
    )


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_param("model", "'model' must be a string")
    return model


def _message(i: int, m: Any) -> dict[str, Any]:
    param = f"messages[{i}]"
    if not isinstance(m, dict):
        raise bad_param(param, f"{param} must be an object")
    role = m.get("role")
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise bad_param(f"{param}.role", f"{param}.role must be one of system, developer, user, assistant, tool")
    content = m.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise bad_param(f"{param}.content[{j}]", "this model accepts text content parts only")
            if not isinstance(part.get("text"), str):
                raise bad_param(f"{param}.content[{j}].text", "a text content part needs a string 'text'")
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise bad_param(f"{param}.content", f"{param}.content must be a string or an array of content parts")
    out = {k: v for k, v in m.items() if k in ("name", "tool_calls", "tool_call_id")}
    return {**out, "role": "system" if role == "developer" else role, "content": text}


def _prompts(prompt: Any) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
               for p in prompt):
            return [list(p) for p in prompt]
    raise bad_param("prompt", "'prompt' must be a string, an array of strings, or token ids (an array of integers "
                              "or of arrays of integers)")


def _stream(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    """stream, include_usage, and continuous usage (every chunk carries the usage so far)."""
    stream = _bool(body, "stream", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False, False
    if not stream:
        raise bad_param("stream_options", "'stream_options' is only allowed with 'stream': true")
    if not isinstance(options, dict):
        raise bad_param("stream_options", "'stream_options' must be an object")
    include = _bool(options, "include_usage", False, prefix="stream_options.")
    return stream, include, include and _bool(options, "continuous_usage_stats", False, prefix="stream_options.")


def _refuse_logprobs(body: dict[str, Any]) -> None:
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise bad_param("logprobs", "log probabilities are not supported by this engine")


def _sampling(body: dict[str, Any], max_names: tuple[str, ...], default_max: int | None = None) -> SamplingParams:
    max_tokens = default_max
    for name in max_names:
        if body.get(name) is not None:
            max_tokens = _int(body, name, 1, 1 << 30, None)
            break
    for name in ("presence_penalty", "frequency_penalty"):
        if _float(body, name, -2.0, 2.0, 0.0) != 0.0:
            raise bad_param(name, f"'{name}' is not supported by this engine (only 0)")
    return SamplingParams(
        max_tokens=max_tokens, temperature=_float(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_top_p(body), stop=_stop(body.get("stop")), seed=_int(body, "seed", -(1 << 63), (1 << 63) - 1, None),
        min_tokens=_int(body, "min_tokens", 0, 1 << 30, 0), ignore_eos=_bool(body, "ignore_eos", False),
    )


def _top_p(body: dict[str, Any]) -> float:
    top_p = _float(body, "top_p", 0.0, 1.0, 1.0)
    if top_p <= 0.0:
        raise bad_param("top_p", "'top_p' must be greater than 0 and at most 1")
    return top_p


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(isinstance(s, str) for s in items):
        raise bad_param("stop", f"'stop' must be a string or an array of up to {MAX_STOP} strings")
    if any(not s or len(s) > MAX_STOP_CHARS for s in items):
        raise bad_param("stop", f"each stop sequence must be 1..{MAX_STOP_CHARS} characters")
    return tuple(items)


def _int(body: dict[str, Any], name: str, lo: int, hi: int, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_param(name, f"'{name}' must be an integer between {lo} and {hi}")
    return value


def _float(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise bad_param(name, f"'{name}' must be a number between {lo} and {hi}")
    return float(value)


def _bool(body: dict[str, Any], name: str, default: bool, prefix: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_param(prefix + name, f"'{prefix}{name}' must be a boolean")
    return value


def unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"The model '{name}' does not exist; this engine serves '{served}'", param="model",
                    code="model_not_found")
