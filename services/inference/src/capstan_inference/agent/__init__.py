"""The inference node agent (capability "serving"): runs service replicas in the sandbox, with their
probes, pre-stop and grace period (see :mod:`.agent`). ``capstan-inference-agent`` is :func:`main`."""

from .__main__ import main

__all__ = ["main"]
