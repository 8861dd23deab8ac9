"""The inference service definition: what ``capstan-inference`` runs."""

from __future__ import annotations

from pathlib import Path

from capstan_core.service import ServiceDefinition, reconcile_forever

from . import api
from .app import InferenceApp
from .projections import InferenceProjection

# The control loop is timed too (drain delays, auto-stop, autoscaling), so its 1 s tick is the truth;
# wake-ups only make a change (a report, a placement) act at once.
QUIET = frozenset({
    "TrainingTaskSubmitted", "TrainingInstanceStarted", "TrainingInstanceExited", "TrainingTaskEnded",
    "TrainingTaskRequeued", "NodeHealthChecked", "JoinTokenCreated", "JoinTokenUsed", "JoinTokenRevoked",
})


async def _reconcile(app: InferenceApp) -> None:
    await reconcile_forever(app.ctx, app.steps())


DEFINITION = ServiceDefinition(
    name="inference",
    migrations=Path(__file__).parent / "migrations",
    projections=lambda: [InferenceProjection()],
    build=InferenceApp,
    register=api.register,
    access=api.ACCESS,
    background=[_reconcile],
    wakes_agents=True,
    quiet=QUIET,
)
