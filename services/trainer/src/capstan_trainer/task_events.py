"""A task's lifecycle events as a user reads them (SPEC §3.3 "events"): each event of the task's
aggregate in words, with a level. The log is the source; nothing here is stored."""

from __future__ import annotations

from dataclasses import dataclass

from capstan_core.contracts.training import (
    TrainingInstanceExited,
    TrainingInstanceStarted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskRestarting,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
    TrainingTaskTagsUpdated,
)
from capstan_core.events import Event


@dataclass(frozen=True)
class TaskEvent:
    at_ms: int
    level: str  # info | warning | error
    type: str
    message: str


def describe(e: Event, at_ms: int) -> TaskEvent | None:
    """One event in words (None: not a fact a user reads about, e.g. an unknown newer type)."""
    at = int(getattr(e, "at_ms", 0) or at_ms)
    name = type(e).__name__
    if isinstance(e, TrainingTaskSubmitted):
        return TaskEvent(at, "info", name, f"submitted by {e.creator}: {e.instance_count} instance(s)")
    if isinstance(e, TrainingInstanceStarted):
        return TaskEvent(at, "info", name, f"instance {e.index} started on node {e.node_id}")
    if isinstance(e, TrainingInstanceExited):
        level = "info" if e.exit_code == 0 else "warning"
        why = f": {e.message}" if e.message else ""
        return TaskEvent(at, level, name, f"instance {e.index} exited with code {e.exit_code}{why}")
    if isinstance(e, TrainingTaskStopRequested):
        return TaskEvent(at, "info", name, f"stop requested by {e.by}")
    if isinstance(e, TrainingTaskPreempting):
        return TaskEvent(at, "warning", name, f"attempt {e.attempt} evicted: {e.reason}")
    if isinstance(e, TrainingTaskRestarting):
        return TaskEvent(at, "warning", name, e.reason or f"restart {e.restart}")
    if isinstance(e, TrainingTaskRequeued):
        return TaskEvent(at, "info", name, f"queued again as attempt {e.attempt} ({e.cause}): {e.reason}")
    if isinstance(e, TrainingTaskTagsUpdated):
        return TaskEvent(at, "info", name, "tags: " + ", ".join(f"{k}={v}" for k, v in e.tags.items()))
    if isinstance(e, TrainingTaskEnded):
        level = {"Succeeded": "info", "Stopped": "info"}.get(e.status, "error")
        return TaskEvent(at, level, name, e.status + (f": {e.reason}" if e.reason else ""))
    return None
