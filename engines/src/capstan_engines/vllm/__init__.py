"""The built-in LLM runtime on vLLM (SPEC 6.6): ``python -m capstan_engines.vllm --model-dir D --port P``.

``flags``: the SPEC's env vars mapped onto ``vllm serve`` flags, written against vLLM 0.33.0's argument
parser (``vllm/engine/arg_utils.py``, ``vllm/entrypoints/common/cli_args.py``, quantization methods from
``vllm/model_executor/layers/quantization/__init__.py``, read from the 0.33.0 wheel); ``templates``: the
chat-template table; ``estimate``: the GPU memory and card count a model needs.
"""
