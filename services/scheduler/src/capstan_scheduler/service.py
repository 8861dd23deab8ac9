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


# What never changes a scheduling decision (instance reports, health records, join tokens): a batch of
# only these does not start a cycle. Agents act on assignments only: placed, released, requeued, lost.
QUIET = frozenset({
    "TrainingInstanceStarted", "TrainingInstanceExited", "TrainingTaskPreempting", "TrainingTaskRestarting",
    "TrainingTaskStopRequested", "NodeHealthChecked", "JoinTokenCreated", "JoinTokenUsed", "JoinTokenRevoked",
    # an owner's own events beside the workload contract (WorkloadSubmitted / WorkloadWithdrawn wake it)
    "TrainingTaskSubmitted", "TrainingTaskEnded",
})
AGENTS_QUIET = QUIET | {
    "TrainingTaskSubmitted", "TrainingTaskEnded", "TrainingTaskRequeued", "WorkloadQueued", "WorkloadRejected",
    "WorkloadPreemptionRequested", "ResourceGroupCreated", "ResourceGroupUpdated", "ResourceGroupDeleted",
    "NodeJoined", "NodeStateChanged", "WorkloadSubmitted", "WorkloadWithdrawn",
}

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
    quiet=QUIET,
    agents_quiet=AGENTS_QUIET,
)
