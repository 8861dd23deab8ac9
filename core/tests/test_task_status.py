"""The one training-task state machine: a fold of the task's events (and its workload's)."""

from __future__ import annotations

import re
from pathlib import Path

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import InstancePlacement, WorkloadPlaced, WorkloadQueued
from capstan_core.contracts.task_status import ALL, FINISHED, TaskStatus, advance, status_of
from capstan_core.contracts.training import (
    TrainingInstanceStarted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskRestarting,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
)

T = "train-x"
SUBMITTED = TrainingTaskSubmitted(
    task_id=T, name="n", resource_group_id="rsg-1", command="true", hyperparameters={},
    resources=ResourceSpec(cpu=1, memory_gib=1), instance_count=1, tags={}, creator="u", stop_grace_seconds=30, at_ms=1,
)
QUEUED = WorkloadQueued(workload_id=T, kind="training", resource_group_id="rsg-1", at_ms=2)
PLACED = WorkloadPlaced(workload_id=T, kind="training", resources=ResourceSpec(cpu=1, memory_gib=1),
                        placements=[InstancePlacement(index=0, node_id="node-1")], at_ms=3)
STARTED = TrainingInstanceStarted(task_id=T, index=0, node_id="node-1", at_ms=4)
STOP = TrainingTaskStopRequested(task_id=T, by="u", at_ms=5)


def _ended(status: str) -> TrainingTaskEnded:
    return TrainingTaskEnded(task_id=T, status=status, at_ms=9)  # type: ignore[arg-type]


def test_the_happy_path() -> None:
    seen = []
    status = None
    for e in (SUBMITTED, QUEUED, PLACED, STARTED, _ended("Succeeded")):
        status = advance(status, e)
        seen.append(status)
    assert seen == ["Submitting", "Queued", "Starting", "Running", "Succeeded"]


def test_nothing_moves_a_finished_task_and_nothing_moves_a_task_that_does_not_exist() -> None:
    for final in ("Succeeded", "Failed", "Stopped"):
        done = status_of([SUBMITTED, QUEUED, _ended(final)])
        for e in (QUEUED, PLACED, STARTED, STOP, _ended("Failed"), SUBMITTED):
            assert advance(done, e) == final
    assert advance(None, QUEUED) is None and advance(None, STARTED) is None


def test_stop_wins_over_eviction_and_restart_until_the_end() -> None:
    stopping = status_of([SUBMITTED, QUEUED, PLACED, STARTED, STOP])
    assert stopping is TaskStatus.STOPPING
    preempt = TrainingTaskPreempting(task_id=T, attempt=0, preemptor_id="", at_ms=6)
    restart = TrainingTaskRestarting(task_id=T, attempt=0, index=0, exit_code=1, restart=1, at_ms=6)
    requeue = TrainingTaskRequeued(task_id=T, attempt=1, reason="r", at_ms=7)
    for e in (preempt, restart, requeue, QUEUED, PLACED, STARTED):
        assert advance(stopping, e) is TaskStatus.STOPPING
    assert advance(stopping, _ended("Stopped")) is TaskStatus.STOPPED


def test_evicted_and_restarting_tasks_go_back_to_the_queue_and_start_again() -> None:
    for leaving, status in (
        (TrainingTaskPreempting(task_id=T, attempt=0, preemptor_id="p", at_ms=6), "Preempting"),
        (TrainingTaskRestarting(task_id=T, attempt=0, index=0, exit_code=1, restart=1, at_ms=6), "Restarting"),
    ):
        events = [SUBMITTED, QUEUED, PLACED, STARTED, leaving]
        assert status_of(events) == status
        events.append(TrainingTaskRequeued(task_id=T, attempt=1, reason="r", at_ms=7))
        assert status_of(events) == "Queued"
        assert status_of([*events, PLACED, STARTED]) == "Running"


def test_a_stop_before_placement_and_a_duplicate_submit() -> None:
    assert status_of([SUBMITTED, STOP]) == "Stopping"
    assert status_of([SUBMITTED, QUEUED, STARTED]) == "Queued"  # a stray report never skips placement
    assert status_of([SUBMITTED, QUEUED, SUBMITTED]) == "Queued"


def test_the_enum_names_every_status_and_the_finished_set_is_spelled_once() -> None:
    assert set(ALL) == {s.value for s in TaskStatus} and FINISHED < set(TaskStatus)
    # No module outside the state machine spells the finished set again (the issue found eight).
    root = Path(__file__).resolve().parents[2]
    spelled = re.compile(r"""["']Succeeded["'],\s*["']Failed["'],\s*["']Stopped["']""")
    offenders = [
        str(p.relative_to(root)) for top in ("core/src", "services", "cli/src") for p in (root / top).rglob("*.py")
        if "/tests/" not in str(p) and p.name != "task_status.py" and p.name != "training.py"
        and spelled.search(p.read_text())
    ]
    assert offenders == []
