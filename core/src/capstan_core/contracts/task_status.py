"""The training task's state machine (SPEC §3.2): one enum and one transition function, used by the
trainer's domain and projection, the agents, the gateway and the CLI alike.

A task's status is a fold of its events: ``status_of(events)`` is ``advance`` applied from ``None``.
The trainer's read model applies ``advance`` to the stored status one event at a time, the scheduler's
facts about the task's workload (queued, placed) included; the trainer's aggregate folds only its own
events, so it never sees Queued or Starting (nothing it decides depends on them).

::

    Submitting ─ WorkloadQueued ─▶ Queued ─ WorkloadPlaced ─▶ Starting ─ InstanceStarted ─▶ Running
        │                           ▲  ▲                                                      │
        │                           │  └── TrainingTaskRequeued ◀─ Preempting / Restarting ◀─┤
        └─ StopRequested (any unfinished) ─▶ Stopping ───────────────────────────────────────┤
                                          TrainingTaskEnded ─▶ Succeeded | Failed | Stopped ◀┘
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from ..events import Event
from .scheduling import WorkloadPlaced, WorkloadQueued
from .training import (
    TrainingInstanceStarted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskRestarting,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
)


class TaskStatus(StrEnum):
    SUBMITTING = "Submitting"
    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"  # the user stopped it; its instances are leaving
    PREEMPTING = "Preempting"  # evicted; it goes back to the queue once its instances have left
    RESTARTING = "Restarting"  # failed with restarts left; it goes back to the queue once they have left
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"


ALL: tuple[str, ...] = tuple(s.value for s in TaskStatus)
FINISHED: frozenset[TaskStatus] = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.STOPPED})
# The instances of the current attempt must stop (SIGTERM and the task's grace period).
LEAVING: frozenset[TaskStatus] = frozenset({TaskStatus.STOPPING, TaskStatus.PREEMPTING, TaskStatus.RESTARTING})
# Waiting for a node: what "queue time" and "position" describe.
WAITING: frozenset[TaskStatus] = frozenset({TaskStatus.SUBMITTING, TaskStatus.QUEUED})


def is_finished(status: str | None) -> bool:
    return status in FINISHED


def advance(status: str | None, event: Event) -> TaskStatus | None:
    """The status after ``event`` (``None``: the task does not exist yet). Events that say nothing about
    the status, and events arriving after the task finished, leave it as it is."""
    current = TaskStatus(status) if status is not None else None
    if isinstance(event, TrainingTaskSubmitted):
        return current or TaskStatus.SUBMITTING
    if current is None or current in FINISHED:
        return current
    if isinstance(event, TrainingTaskEnded):
        return TaskStatus(event.status)
    if isinstance(event, TrainingTaskStopRequested):
        return TaskStatus.STOPPING
    if current is TaskStatus.STOPPING:
        return current  # only its end moves it on
    if isinstance(event, TrainingTaskPreempting):
        return TaskStatus.PREEMPTING
    if isinstance(event, TrainingTaskRestarting):
        return TaskStatus.RESTARTING
    if isinstance(event, TrainingTaskRequeued):
        return TaskStatus.QUEUED
    if isinstance(event, WorkloadQueued) and current is TaskStatus.SUBMITTING:
        return TaskStatus.QUEUED
    if isinstance(event, WorkloadPlaced) and current in WAITING:
        return TaskStatus.STARTING
    if isinstance(event, TrainingInstanceStarted) and current is TaskStatus.STARTING:
        return TaskStatus.RUNNING
    return current


def status_of(events: Iterable[Event]) -> TaskStatus | None:
    status: TaskStatus | None = None
    for e in events:
        status = advance(status, e)
    return status
