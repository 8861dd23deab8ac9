"""The trainer service definition: what ``capstan-trainer`` runs (the node agent is ``agent/``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from capstan_core.service import ServiceDefinition, reconcile_forever

from . import api
from .app import TrainerApp
from .projections import TrainerProjection


async def _reconcile(app: TrainerApp) -> None:
    await reconcile_forever(app.ctx, app.steps(), interval=2.0)


async def _tensorboards(app: TrainerApp) -> None:
    """Holds the TensorBoards the trainer started; they stop with it."""
    try:
        await asyncio.Event().wait()
    finally:
        app.tensorboards.stop_all()


DEFINITION = ServiceDefinition(
    name="trainer",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [TrainerProjection()],
    build=TrainerApp,
    register=api.register,
    access=api.ACCESS,
    background=[_reconcile, _tensorboards],
    wakes_agents=True,
)
