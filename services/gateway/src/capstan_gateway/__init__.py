"""Capstan gateway: the management REST API (``/api/v1``) in front of the platform's gRPC services."""

from __future__ import annotations

from .app import create_app
from .settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
