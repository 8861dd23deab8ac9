"""Inference agent settings (``CAPSTAN_*``): every node agent's
(:class:`capstan_agentkit.settings.NodeAgentSettings`) plus the inference service's address."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic_settings import SettingsConfigDict

from capstan_agentkit.settings import NodeAgentSettings


class InferenceAgentSettings(NodeAgentSettings):
    model_config = SettingsConfigDict(env_prefix="CAPSTAN_", extra="ignore")

    inference_addr: str = "127.0.0.1:50054"
    node_name: str = socket.gethostname() + "-inference"
    agent_dir: Path = Path(".capstan/agents/inference")
    usage_report_s: float = 5.0  # how often a running replica's CPU and memory use is reported (autoscaling)
