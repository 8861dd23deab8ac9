"""A version's runtime choice → the argv its instances run in the sandbox (the inference service calls this).

Contract of :func:`build_argv`:

- ``runtime``: ``"transformers"`` | ``"vllm"`` | ``"generic"`` (:data:`RUNTIMES`); anything else, ``"custom"``
  included (a custom command is the version's own argv), raises ``ValueError``.
- The model is at ``/data/model`` (:data:`MODEL_DIR`, mounted read-only); the engine listens on
  ``0.0.0.0:port`` inside the instance's network namespace; ``served_model_name`` is the ``model`` name
  callers use (the service group id unless the version sets another).
- ``env`` is the version's environment; for ``vllm`` it holds SPEC 6.6's settings and is validated here, so a
  setting the runtime cannot honour is refused at deploy time: ``ValueError`` with a message for the user
  (the env is still passed to the instance by the caller; it is not encoded in the argv).
- Pure: no I/O, no imports of torch or vLLM; the same inputs give the same argv. The argv starts with
  ``python3 -m capstan_engines.<runtime>``: the sandbox's Python has this package installed.
- Every runtime answers ``GET /health`` (200 once loaded) — the readiness probe to use; the OpenAI
  runtimes serve ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``; generic serves
  ``POST /v1/models/m:predict``. On SIGTERM they stop accepting, finish in-flight requests and exit 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from .vllm import flags

MODEL_DIR = "/data/model"
RUNTIMES = ("transformers", "vllm", "generic")
OPENAI_RUNTIMES = frozenset({"transformers", "vllm"})


def build_argv(runtime: str, *, port: int, served_model_name: str, env: Mapping[str, str]) -> list[str]:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: one of {', '.join(RUNTIMES)} (a custom command is the "
                         "version's own argv)")
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port}: 1..65535")
    if not served_model_name or any(c.isspace() for c in served_model_name):
        raise ValueError("served_model_name must be a non-empty name without spaces")
    if runtime == "vllm":
        try:
            flags.build(env, port=port, served_model_name=served_model_name)
        except flags.UnsupportedSetting as e:
            raise ValueError(str(e)) from None
    return ["python3", "-m", f"capstan_engines.{runtime}", "--model-dir", MODEL_DIR, "--port", str(port),
            "--served-model-name", served_model_name]
