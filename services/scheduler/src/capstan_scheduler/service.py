"""The scheduler service definition: what ``capstan-scheduler`` runs."""

from __future__ import annotations

from pathlib import Path

from capstan_core.service import ServiceDefinition, reconcile_forever

from . import api
from .app import SchedulerApp
from .projections import SchedulerProjection
from .reconcile import Scheduler


async def _schedule(app: SchedulerApp) -> None:
    scheduler = Scheduler(app)
    await reconcile_forever(app.ctx, scheduler.steps(), interval=1.0)


DEFINITION = ServiceDefinition(
    name="scheduler",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [SchedulerProjection()],
    build=SchedulerApp,
    register=api.register,
    background=[_schedule],
)
