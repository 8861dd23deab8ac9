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


# The trainer's loops end rejected or stopped unplaced tasks, start evictions and restart tasks of lost
# nodes: only these events can give them work (the timer is the safety net).
_UNRELATED = frozenset({
    "NodeHealthChecked", "NodeJoined", "NodeStateChanged", "JoinTokenCreated", "JoinTokenUsed", "JoinTokenRevoked",
    "ResourceGroupCreated", "ResourceGroupUpdated",
})
QUIET = _UNRELATED | {
    "TrainingTaskSubmitted", "WorkloadQueued", "WorkloadPlaced", "TrainingInstanceStarted", "TrainingInstanceExited",
    "WorkloadReleased", "TrainingTaskEnded", "TrainingTaskRequeued", "WorkloadRequeued", "WorkloadSubmitted",
    "WorkloadWithdrawn",
}
# Agents act on a task's status: placed (Starting), stopping, preempting, restarting, ended, requeued.
AGENTS_QUIET = _UNRELATED | {
    "TrainingTaskSubmitted", "WorkloadQueued", "WorkloadRejected", "TrainingInstanceStarted", "TrainingInstanceExited",
    "WorkloadReleased", "ResourceGroupDeleted", "WorkloadSubmitted", "WorkloadWithdrawn",
}
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
    quiet=QUIET,
    agents_quiet=AGENTS_QUIET,
)
