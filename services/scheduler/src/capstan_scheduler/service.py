"""The scheduler service definition: what ``capstan-scheduler`` runs."""

from __future__ import annotations

from pathlib import Path

from capstan_core.service import ServiceDefinition, reconcile_forever

from . import api
from .app import SchedulerApp
from .node_auth import JoinTokenProjection
from .projections import SchedulerProjection
from .reconcile import Scheduler


async def _schedule(app: SchedulerApp) -> None:
    scheduler = Scheduler(app)
    await reconcile_forever(app.ctx, scheduler.steps(), interval=1.0)


DEFINITION = ServiceDefinition(
    name="scheduler",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [SchedulerProjection(), JoinTokenProjection()],
    build=SchedulerApp,
    register=api.register,
    access=api.ACCESS,
    background=[_schedule],
    bootstrap=True,
    wakes_agents=True,
)
