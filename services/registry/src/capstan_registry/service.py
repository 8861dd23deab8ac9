"""The registry service definition: what ``capstan-registry`` runs."""

from __future__ import annotations

from pathlib import Path

from capstan_core.service import ServiceDefinition

from . import api
from .app import RegistryApp
from .projections import RegistryProjection

DEFINITION = ServiceDefinition(
    name="registry",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [RegistryProjection()],
    build=RegistryApp,
    register=api.register,
    access=api.ACCESS,
)
