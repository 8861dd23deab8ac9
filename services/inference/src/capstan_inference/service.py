"""The inference service definition: what ``capstan-inference`` runs."""

from __future__ import annotations

from pathlib import Path

from capstan_core.service import ServiceDefinition

from . import api
from .app import InferenceApp, InferenceProjection

DEFINITION = ServiceDefinition(
    name="inference",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [InferenceProjection()],
    build=InferenceApp,
    register=api.register,
    access=api.ACCESS,
)
