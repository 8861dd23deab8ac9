"""The vLLM runtime's argv (vLLM 0.33.0's real flags), the chat-template table, the resource estimate with
SPEC 6.6's two worked examples, and the launcher's refusals. vLLM itself needs a GPU:
scripts/gpu_check_vllm.py proves the argv on one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from capstan_engines import runtimes
from capstan_engines.vllm import estimate, flags, templates


def argv(env: dict[str, str], **kw: object) -> list[str]:
    return flags.build(env, port=8501, served_model_name="ms-abc", **kw).argv  # type: ignore[arg-type]


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_defaults() -> None:
    a = argv({}, gpus=2, model_context=131072)
    assert a[0] == "/data/model"
    assert value(a, "--port") == "8501" and value(a, "--served-model-name") == "ms-abc"
    assert value(a, "--max-model-len") == "8192"  # capped when the model's context is longer
    assert value(a, "--dtype") == "float16"
    assert "--enable-prefix-caching" in a and "--trust-remote-code" in a
    assert value(a, "--tensor-parallel-size") == "2"  # the instance's GPUs
    assert value(a, "--gpu-memory-utilization") == "0.9"
    for absent in ("--quantization", "--enforce-eager", "--speculative-config", "--disable-log-requests",
                   "--use-v2-block-manager", "--num-scheduler-steps", "--api-key", "--api-keys"):
        assert absent not in a
    assert value(argv({}, model_context=2048), "--max-model-len") == "2048"


def test_env_mapping() -> None:
    a = argv({"MODEL": "/data/model/ckpt-2", "MAX_MODEL_LEN": "4096", "DTYPE": "bfloat16",
              "ENABLE_PREFIX_CACHING": "false", "TP": "4", "TRUST_REMOTE_CODE": "false",
              "GPU_MEMORY_UTILIZATION": "0.85", "ENFORCE_EAGER": "true", "USE_LOOKAHEAD": "1",
              "NUM_SPECULATIVE_TOKENS": "3", "DISABLE_MEM_CACHE": "true"})
    assert a[0] == "/data/model/ckpt-2"
    assert value(a, "--max-model-len") == "4096" and value(a, "--dtype") == "bfloat16"
    assert "--no-enable-prefix-caching" in a and "--trust-remote-code" not in a
    assert value(a, "--tensor-parallel-size") == "4" and value(a, "--gpu-memory-utilization") == "0.85"
    assert "--enforce-eager" in a
    assert json.loads(value(a, "--speculative-config")) == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 1}


@pytest.mark.parametrize(("q", "expected"), [
    ("none", None), ("auto", None), ("fp8", "fp8"), ("ifq", "int8_per_channel_weight_only")])
def test_quantization(q: str, expected: str | None) -> None:
    a = argv({"QUANTIZATION": q})
    assert (value(a, "--quantization") if "--quantization" in a else None) == expected


def test_quantization_follows_the_installed_vllm() -> None:
    with pytest.raises(flags.UnsupportedSetting, match="not supported by this runtime.*bitsandbytes"):
        argv({"QUANTIZATION": "ifq_nf4"})  # vLLM 0.33 removed bitsandbytes
    older = flags.VLLM_0_33_QUANTIZATION | {"bitsandbytes"}
    assert value(argv({"QUANTIZATION": "ifq_nf4"}, quantization_methods=older), "--quantization") == "bitsandbytes"
    with pytest.raises(flags.UnsupportedSetting, match="smoothquant is not supported by this runtime"):
        argv({"QUANTIZATION": "smoothquant"})


@pytest.mark.parametrize("env", [
    {"QUANTIZATION": "int3"}, {"DTYPE": "fp4"}, {"MAX_MODEL_LEN": "0"}, {"MAX_MODEL_LEN": "lots"},
    {"TP": "0"}, {"GPU_MEMORY_UTILIZATION": "1.5"}, {"ENFORCE_EAGER": "maybe"}, {"CONV_TEMPLATE": "nope"},
    {"USE_LOOKAHEAD": "1", "NUM_SPECULATIVE_TOKENS": "-2"},
])
def test_refusals(env: dict[str, str]) -> None:
    with pytest.raises(flags.UnsupportedSetting):
        argv(env)
    with pytest.raises(ValueError):
        runtimes.build_argv("vllm", port=8501, served_model_name="ms-x", env=env)
    with pytest.raises(flags.UnsupportedSetting, match="exceeds the model's context"):
        argv({"MAX_MODEL_LEN": "9000"}, model_context=8192)


@pytest.mark.parametrize(("model_id", "family"), [
    ("Hunyuan-7B-Instruct", "hunyuan"),
    ("Llama-3.2-11B-Vision-Instruct", "llama-3.2-vision"),
    ("Llama-3.2-3B-Instruct", "llama-3.2"),
    ("Meta-Llama-3.1-8B-Instruct", "llama-3.1"),
    ("Qwen2.5-7B-Instruct", "qwen2.5"),
    ("Baichuan2-13B-Chat", "baichuan2-chat"),
    ("Llama-2-7b-chat-hf", "llama-2"),
    ("Meta-Llama-3-8B-Instruct", "llama-3"),
    ("Qwen-7B-Chat", "qwen"),
    ("Qwen2-72B-Instruct", "qwen"),
    ("mistral-7b", None),
])
def test_template_table(model_id: str, family: str | None) -> None:
    found = templates.match(model_id=model_id)
    assert (found.name if found else None) == family


def test_template_flags() -> None:
    assert templates.match(conv_template="generate") is not None
    assert not templates.match(conv_template="generate").chat  # type: ignore[union-attr]
    assert templates.match(conv_template="qwen-7b-chat").name == "qwen"  # type: ignore[union-attr]
    assert templates.match(model_id="Qwen2.5-7B", conv_template="llama-2").name == "llama-2"  # type: ignore[union-attr]
    a = argv({"MODEL_ID": "Qwen2.5-7B-Instruct"})
    assert value(a, "--tool-call-parser") == "hermes" and "--enable-auto-tool-choice" in a
    assert templates.match(model_id="Meta-Llama-3-8B").stop_token_ids == (128001, 128009)  # type: ignore[union-attr]
    assert templates.match(model_id="qwen-7b-chat").stop_token_ids == (151643, 151644, 151645)  # type: ignore[union-attr]


def test_estimate_worked_examples() -> None:
    llama = estimate.estimate(params_billion=8, hidden=4096, layers=32, kv_heads=8, attn_heads=32, context=128 * 1024)
    assert (llama.weights_gib, llama.kv_cache_gib) == (16, 16)
    assert round(llama.needed_gib, 2) == 35.56
    qwen = estimate.estimate(params_billion=72, hidden=8192, layers=80, kv_heads=8, attn_heads=64, context=32 * 1024)
    assert (qwen.weights_gib, qwen.kv_cache_gib) == (144, 10)
    assert round(qwen.needed_gib, 2) == 171.11
    # cards: ceil(171.11 / 80) = 3, but 64 heads do not split over 3 cards: 4
    assert estimate.estimate(params_billion=72, hidden=8192, layers=80, kv_heads=8, attn_heads=64,
                             context=32 * 1024, card_gib=80).cards == 4
    assert estimate.estimate(params_billion=8, hidden=4096, layers=32, kv_heads=8, attn_heads=32,
                             context=128 * 1024, card_gib=40).cards == 1
    cfg = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "max_position_embeddings": 131072}
    assert round(estimate.from_config(cfg, params_billion=8).needed_gib, 2) == 35.56


def test_launcher(tiny_model: Path, tmp_path: Path) -> None:
    env = {"MODEL_ID": "Meta-Llama-3-8B", "QUANTIZATION": "fp8", "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "capstan_engines.vllm", "--model-dir", str(tiny_model), "--port",
                          "8501", "--served-model-name", "ms-1", "--print-argv"], env=env, capture_output=True,
                         text=True, check=True)
    command = json.loads(run.stdout)
    assert command[command.index("serve") + 1] == str(tiny_model)
    assert value(command, "--max-model-len") == "256"  # the tiny model's own context
    gen = Path(value(command, "--generation-config")) / "generation_config.json"
    eos = json.loads(gen.read_text())["eos_token_id"]
    assert 128001 in eos and 128009 in eos  # the llama-3 family's stop ids, with the model's own
    refused = subprocess.run([sys.executable, "-m", "capstan_engines.vllm", "--model-dir", str(tiny_model),
                              "--port", "8501"], env={**env, "QUANTIZATION": "smoothquant"}, capture_output=True,
                             text=True)
    assert refused.returncode == 2 and "not supported by this runtime" in refused.stderr
    missing = subprocess.run([sys.executable, "-m", "capstan_engines.vllm", "--model-dir", str(tiny_model),
                              "--port", "8501"], env=env, capture_output=True, text=True)
    if missing.returncode == 2:  # the normal case here: vLLM is GPU-only and not installed
        assert "vLLM is not installed" in missing.stderr


def test_runtimes_argv() -> None:
    for runtime in ("transformers", "generic", "vllm"):
        assert runtimes.build_argv(runtime, port=8501, served_model_name="ms-abc", env={}) == [
            "python3", "-m", f"capstan_engines.{runtime}", "--model-dir", "/data/model", "--port", "8501",
            "--served-model-name", "ms-abc"]
    for bad in ({"runtime": "custom"}, {"runtime": "sglang"}, {"port": 0}, {"served_model_name": "a b"},
                {"served_model_name": ""}):
        kwargs: dict[str, object] = {"runtime": "transformers", "port": 8501, "served_model_name": "m", "env": {},
                                     **bad}
        with pytest.raises(ValueError):
            runtimes.build_argv(**kwargs)  # type: ignore[arg-type]
