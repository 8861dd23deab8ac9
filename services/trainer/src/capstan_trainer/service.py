"""The trainer service definition: what ``capstan-trainer`` runs (the node agent is ``agent/``)."""

from __future__ import annotations

from pathlib import Path

from capstan_core.service import ServiceDefinition, reconcile_forever

from . import api
from .app import TrainerApp
from .projections import TrainerProjection


async def _reconcile(app: TrainerApp) -> None:
    await reconcile_forever(app.ctx, app.steps(), interval=2.0)


DEFINITION = ServiceDefinition(
    name="trainer",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [TrainerProjection()],
    build=TrainerApp,
    register=api.register,
    access=api.ACCESS,
    background=[_reconcile],
    wakes_agents=True,
)
