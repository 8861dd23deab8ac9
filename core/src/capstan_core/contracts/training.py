"""Events of the training-task aggregate (owner: trainer service). Subject ``capstan.evt.train.<task-id>``."""

from __future__ import annotations

from typing import Any, Literal

from ..events import Event, event
from .common import ResourceSpec

AGGREGATE = "train"


@event("TrainingTaskSubmitted", version=1)
class TrainingTaskSubmitted(Event):
    task_id: str
    name: str
    resource_group_id: str
    command: str
    hyperparameters: dict[str, Any]
    resources: ResourceSpec
    instance_count: int
    tags: dict[str, str]
    creator: str
    stop_grace_seconds: int
    at_ms: int


@event("TrainingInstanceStarted", version=1)
class TrainingInstanceStarted(Event):
    task_id: str
    index: int
    node_id: str
    at_ms: int


@event("TrainingInstanceExited", version=1)
class TrainingInstanceExited(Event):
    task_id: str
    index: int
    node_id: str
    exit_code: int
    message: str = ""
    at_ms: int


@event("TrainingTaskStopRequested", version=1)
class TrainingTaskStopRequested(Event):
    task_id: str
    by: str
    at_ms: int


@event("TrainingTaskPreempting", version=1)
class TrainingTaskPreempting(Event):
    """The scheduler asked for this attempt's resources: instances get SIGTERM and their grace period."""

    task_id: str
    attempt: int
    preemptor_id: str
    at_ms: int


@event("TrainingTaskRequeued", version=1)
class TrainingTaskRequeued(Event):
    """Every instance of the evicted attempt has exited: the task waits again as attempt ``attempt``.
    An eviction does not count as a restart."""

    task_id: str
    attempt: int
    reason: str
    at_ms: int
    # "preempted" (does not count against the restart budget) or "node_lost" (a restart).
    cause: str = "preempted"


@event("TrainingTaskEnded", version=1)
class TrainingTaskEnded(Event):
    task_id: str
    status: Literal["Succeeded", "Failed", "Stopped"]
    exit_code: int | None = None
    reason: str = ""
    at_ms: int
