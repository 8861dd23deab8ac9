"""Capstan's serving engines, run inside a service instance's sandbox (model at ``/data/model``).

- ``python -m capstan_engines.transformers``: an OpenAI-compatible server over transformers, with
  continuous batching (``transformers/``).
- ``python -m capstan_engines.generic``: the generic runtime, a user's ``model_service.py`` served at
  ``/v1/models/m:predict`` (``generic/``).
- ``python -m capstan_engines.vllm``: the built-in LLM runtime, SPEC 6.6's env vars mapped onto
  ``vllm serve`` (``vllm/``).
- :mod:`capstan_engines.runtimes`: a version's runtime choice turned into the argv the sandbox runs.
"""
