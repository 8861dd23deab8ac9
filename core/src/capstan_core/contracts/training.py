"""Events of the training-task aggregate (owner: trainer service). Subject ``capstan.evt.train.<task-id>``."""

from __future__ import annotations

from typing import Any, Literal

from ..events import Event, event
from ..network_modes import NETWORK_MODES  # noqa: F401 - re-exported: part of the task contract
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
    # Auto-restart budget (SPEC 3.1): restarts after a failure; 0 = off. Absent in older events.
    max_restarts: int = 0
    # The instances' network (NETWORK_MODES): "isolated" (own namespace; the task's peers and the outside
    # through NAT), "none" (loopback only) or "host" (only where the group's policy allows it).
    network: str = "isolated"


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
    """This attempt is evicted: the scheduler asked for its resources, or the platform stopped its
    instances (``capstan down``). Instances get SIGTERM and their grace period; once all have exited
    the task is requeued, an eviction, never a failure or a restart."""

    task_id: str
    attempt: int
    preemptor_id: str
    at_ms: int
    reason: str = "preempted"


@event("TrainingTaskRequeued", version=1)
class TrainingTaskRequeued(Event):
    """Every instance of the previous attempt has exited (evicted, restarting after a failure) or its node
    was lost: the task waits again as attempt ``attempt``. An eviction does not count as a restart."""

    task_id: str
    attempt: int
    reason: str
    at_ms: int
    # "preempted": an eviction (not a restart); "node_lost": a restart, the platform's fault, not
    # counted against ``max_restarts``; "failed": an auto-restart after a failure, counted against it.
    cause: str = "preempted"


@event("TrainingTaskRestarting", version=1)
class TrainingTaskRestarting(Event):
    """An instance of attempt ``attempt`` exited abnormally while the task ran, and the task has restarts
    left (``restart`` is the n-th of its ``max_restarts``): the attempt's other instances are stopped
    (SIGTERM and the grace period); once all have exited, ``TrainingTaskRequeued(cause="failed")``."""

    task_id: str
    attempt: int
    index: int
    exit_code: int
    restart: int
    reason: str = ""
    at_ms: int


@event("TrainingTaskEnded", version=1)
class TrainingTaskEnded(Event):
    task_id: str
    status: Literal["Succeeded", "Failed", "Stopped"]
    exit_code: int | None = None
    reason: str = ""
    at_ms: int


# A file `capstan down` leaves in a running instance's directory before it stops the instance's runner:
# the platform stopped it, not the user and not its code, so the agent reports it as an eviction.
PLATFORM_STOP_FILE = "platform-stop"
