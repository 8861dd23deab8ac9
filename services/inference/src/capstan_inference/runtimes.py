"""The argv a replica runs, per runtime (SPEC §6.6, §6.7): the one place that asks the engines for it.

The engines package (``capstan_engines.runtimes.build_argv``) owns the command lines of its runtimes;
a custom command runs as ``/bin/sh -c <command>`` inside the replica's sandbox (the user's own process,
contained like any other).
"""

from __future__ import annotations

from capstan_engines.runtimes import build_argv


def engine_argv(runtime: str, *, port: int, served_model_name: str, env: dict[str, str],
                command: str = "") -> list[str]:
    if runtime == "custom":
        return ["/bin/sh", "-c", command]
    return list(build_argv(runtime, port=port, served_model_name=served_model_name, env=env))
