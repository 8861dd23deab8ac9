"""SPEC 6.6's environment variables → ``vllm serve`` arguments, against vLLM 0.33.0's real flags.

| env var | default | vllm serve |
|---|---|---|
| MODEL | /data/model | the positional model path |
| QUANTIZATION | none | none/auto: no flag (vLLM reads a quantized checkpoint's own config); fp8: ``--quantization fp8``; ifq (int8 weight-only): ``--quantization int8_per_channel_weight_only`` (online); ifq_nf4: ``--quantization bitsandbytes`` where the installed vLLM still has it (0.33 removed it: refused); smoothquant: refused (W8A8 needs a checkpoint quantized ahead, which ``auto`` then serves) |
| MAX_MODEL_LEN | the model's context, capped at 8192 | ``--max-model-len`` |
| DTYPE | float16 | ``--dtype`` (auto, half, float16, bfloat16, float, float32) |
| ENABLE_PREFIX_CACHING | true | ``--enable-prefix-caching`` / ``--no-enable-prefix-caching`` |
| TP | the instance's GPUs | ``--tensor-parallel-size`` |
| TRUST_REMOTE_CODE | true | ``--trust-remote-code`` when true |
| GPU_MEMORY_UTILIZATION | 0.9 | ``--gpu-memory-utilization`` |
| ENFORCE_EAGER | false | ``--enforce-eager`` when true |
| USE_LOOKAHEAD, NUM_SPECULATIVE_TOKENS | 0, 6 | ``--speculative-config {"method": "ngram", "num_speculative_tokens": N, "prompt_lookup_max": 4, "prompt_lookup_min": 1}`` when USE_LOOKAHEAD is on |
| MODEL_ID, CONV_TEMPLATE | | the chat-template table (``templates``): ``--enable-auto-tool-choice --tool-call-parser P`` for families with one; stop ids through the generation config (``__main__``) |
| DISABLE_MEM_CACHE | | the vendor fork's weight memory cache: no upstream equivalent; accepted, changes nothing |

Also ``--served-model-name``, ``--port``, ``--host``. API keys are not flags: the gateway checks keys; a key
for vLLM itself is its own ``VLLM_API_KEY`` environment variable (never argv, which ``ps`` shows).
``--disable-log-requests`` is not passed: upstream removed it (requests are not logged unless
``--enable-log-requests``); neither are the removed ``--use-v2-block-manager`` / ``--num-scheduler-steps``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import templates

DEFAULT_MODEL = "/data/model"
MAX_MODEL_LEN_CAP = 8192
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# vLLM 0.33.0's QUANTIZATION_METHODS (the wheel's vllm/model_executor/layers/quantization/__init__.py); the
# launcher uses the installed vLLM's own list where vLLM is importable.
VLLM_0_33_QUANTIZATION = frozenset({
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online",
    "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token",
    "mxfp8",
})
QUANTIZATION = {  # SPEC value → the upstream methods that implement it, in order of preference
    "fp8": ("fp8",),
    "ifq": ("int8_per_channel_weight_only",),
    "ifq_nf4": ("bitsandbytes",),
}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class UnsupportedSetting(ValueError):
    """A setting this runtime cannot honour: refused at deploy time with this message."""


@dataclass(frozen=True)
class ServeArgs:
    argv: list[str]  # after ``vllm serve``
    family: templates.Family | None


def build(env: Mapping[str, str], *, port: int, served_model_name: str | None = None, gpus: int = 1,
          model_context: int | None = None, quantization_methods: frozenset[str] = VLLM_0_33_QUANTIZATION) -> ServeArgs:
    """The ``vllm serve`` arguments for these settings; UnsupportedSetting names the first bad one."""
    argv = [env.get("MODEL") or DEFAULT_MODEL, "--host", "0.0.0.0", "--port", str(port)]  # noqa: S104
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    argv += _quantization(env.get("QUANTIZATION", "none"), quantization_methods)
    argv += ["--max-model-len", str(_max_model_len(env.get("MAX_MODEL_LEN"), model_context))]
    dtype = (env.get("DTYPE") or "float16").strip().lower()
    if dtype not in DTYPES:
        raise UnsupportedSetting(f"DTYPE={dtype!r}: one of {', '.join(DTYPES)}")
    argv += ["--dtype", dtype]
    argv += ["--enable-prefix-caching" if _flag(env, "ENABLE_PREFIX_CACHING", True) else "--no-enable-prefix-caching"]
    argv += ["--tensor-parallel-size", str(_positive_int(env, "TP", gpus))]
    if _flag(env, "TRUST_REMOTE_CODE", True):
        argv += ["--trust-remote-code"]
    argv += ["--gpu-memory-utilization", str(_utilization(env.get("GPU_MEMORY_UTILIZATION")))]
    if _flag(env, "ENFORCE_EAGER", False):
        argv += ["--enforce-eager"]
    if _flag(env, "USE_LOOKAHEAD", False):
        n = _positive_int(env, "NUM_SPECULATIVE_TOKENS", 6)
        spec: dict[str, Any] = {"method": "ngram", "num_speculative_tokens": n, "prompt_lookup_max": 4,
                                "prompt_lookup_min": 1}
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    _flag(env, "DISABLE_MEM_CACHE", False)  # validated; no upstream equivalent
    try:
        family = templates.match(env.get("MODEL_ID", ""), env.get("CONV_TEMPLATE", ""))
    except templates.UnknownTemplate as e:
        raise UnsupportedSetting(str(e)) from None
    if family and family.tool_parser:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", family.tool_parser]
    return ServeArgs(argv, family)


def _quantization(value: str, installed: frozenset[str]) -> list[str]:
    q = value.strip().lower()
    if q in ("", "none", "auto"):
        return []
    if q == "smoothquant":
        raise UnsupportedSetting("QUANTIZATION=smoothquant is not supported by this runtime: vLLM serves SmoothQuant "
                                 "(W8A8) only from a checkpoint quantized ahead; deploy such a model with "
                                 "QUANTIZATION=auto")
    if q not in QUANTIZATION:
        raise UnsupportedSetting(f"QUANTIZATION={value!r}: one of none, auto, fp8, ifq, ifq_nf4, smoothquant")
    for method in QUANTIZATION[q]:
        if method in installed:
            return ["--quantization", method]
    raise UnsupportedSetting(f"QUANTIZATION={q} is not supported by this runtime: the installed vLLM has no "
                             f"{' or '.join(QUANTIZATION[q])} quantization")


def _max_model_len(value: str | None, model_context: int | None) -> int:
    if value:
        if not value.strip().isdigit() or int(value) < 1:
            raise UnsupportedSetting(f"MAX_MODEL_LEN={value!r}: a positive integer")
        if model_context and int(value) > model_context:
            raise UnsupportedSetting(f"MAX_MODEL_LEN={value} exceeds the model's context ({model_context})")
        return int(value)
    return min(model_context, MAX_MODEL_LEN_CAP) if model_context else MAX_MODEL_LEN_CAP


def _utilization(value: str | None) -> float:
    if not value:
        return 0.9
    try:
        u = float(value)
    except ValueError:
        u = -1.0
    if not 0 < u <= 1:
        raise UnsupportedSetting(f"GPU_MEMORY_UTILIZATION={value!r}: a number in (0, 1]")
    return u


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise UnsupportedSetting(f"{name}={value!r}: true or false")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if not value:
        return default
    if not value.strip().isdigit() or int(value) < 1:
        raise UnsupportedSetting(f"{name}={value!r}: a positive integer")
    return int(value)
