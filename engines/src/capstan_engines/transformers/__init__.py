"""The transformers engine: ``python -m capstan_engines.transformers --model-dir DIR --port P``.

``model``: the model and tokenizer; ``text``: incremental detokenizing and stop sequences; ``kv``: the
batched KV cache (join, leave, trim); ``sampling``: next tokens; ``scheduler``: the continuous-batching
loop; ``app``: the OpenAI-compatible routes.
"""
