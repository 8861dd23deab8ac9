"""One bad task never stops the trainer's control loops for the others (issue #7, part 4).

A trainer service with no background loop; the test appends the facts the loops react to (tasks
submitted, then stopped while queued / rejected by the scheduler / placed and evicted / on a lost node)
and runs the loops' steps. A named fault injection makes the pure ``decide`` function of one loop raise
for one task: the other task still progresses, and the loop's counter moved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import (
    InstancePlacement,
    WorkloadInstancesLost,
    WorkloadPlaced,
    WorkloadPreemptionRequested,
    WorkloadRejected,
)
from capstan_core.contracts.training import TrainingTaskStopRequested, TrainingTaskSubmitted
from capstan_core.events import Event
from capstan_core.eventstore import EventStore
from capstan_core.metrics import LOOP_ITEM_FAILURES, LOOP_STEP_FAILURES
from capstan_core.service import Service
from capstan_core.settings import ServiceSettings
from capstan_core.streams import event_subject
from capstan_core.testing import admin_store
from capstan_trainer import app as app_module
from capstan_trainer.app import TrainerApp
from capstan_trainer.service import DEFINITION as TRAINER


@pytest.fixture
async def trainer(tmp_path: Path, nats_server: Any, secrets_dir: Path) -> AsyncIterator[TrainerApp]:
    svc = Service(dataclasses.replace(TRAINER, background=[]),
                  ServiceSettings(secrets_dir=secrets_dir, data_dir=tmp_path, nats_url=nats_server.url))
    await svc.start()
    try:
        yield svc.app
    finally:
        await svc.stop()


def _placed(tid: str) -> WorkloadPlaced:
    return WorkloadPlaced(workload_id=tid, kind="training", resources=ResourceSpec(),
                          placements=[InstancePlacement(index=0, node_id="node-1")], at_ms=2)


# loop, its decide function, the facts that make the loop act on a task, the task's status afterwards
CASES: list[tuple[str, str, Callable[[str], list[tuple[str, Event]]], str]] = [
    ("trainer.end_unscheduled", "decide_end",
     lambda t: [("train", TrainingTaskStopRequested(task_id=t, by="u", at_ms=2))], "Stopped"),
    ("trainer.end_unscheduled", "decide_end",
     lambda t: [("workload", WorkloadRejected(workload_id=t, reason="no room", at_ms=2))], "Failed"),
    ("trainer.evictions", "decide_preempting",
     lambda t: [("workload", _placed(t)), ("workload", WorkloadPreemptionRequested(workload_id=t, preemptor_id="p",
                                                                                    at_ms=3))], "Preempting"),
    ("trainer.restart_lost", "decide_restart_lost",
     lambda t: [("workload", _placed(t)), ("workload", WorkloadInstancesLost(workload_id=t, node_id="node-1",
                                                                              at_ms=3))], "Queued"),
]


@pytest.mark.parametrize(("loop", "decide", "facts", "after"), CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
async def test_one_task_failing_in_a_loop_does_not_hold_the_others(
    trainer: TrainerApp, monkeypatch: pytest.MonkeyPatch, loop: str, decide: str,
    facts: Callable[[str], list[tuple[str, Event]]], after: str, nats_server: Any, secrets_dir: Path,
) -> None:
    async with admin_store(nats_server.url, secrets_dir) as store:  # as the trainer and the scheduler would
        await _append_facts(store, facts)
    await _check_loop(trainer, monkeypatch, loop, decide, after)


async def _append_facts(store: EventStore, facts: Callable[[str], list[tuple[str, Event]]]) -> None:
    for tid in ("train-bad", "train-good"):
        await store.append(event_subject("train", tid), [TrainingTaskSubmitted(
            task_id=tid, name=tid, resource_group_id="rsg-1", command="x", hyperparameters={}, resources=ResourceSpec(),
            instance_count=1, tags={}, creator="u", stop_grace_seconds=30, at_ms=1)], expected_seq=None)
        for kind, event in facts(tid):
            await store.append(event_subject(kind, tid), [event], expected_seq=None)


async def _check_loop(trainer: TrainerApp, monkeypatch: pytest.MonkeyPatch, loop: str, decide: str, after: str) -> None:
    await trainer.ctx.runner.wait_for(await trainer.ctx.store.last_seq())
    real = getattr(app_module, decide)

    def injected(t: Any, **kwargs: Any) -> list[Event]:
        if kwargs["task_id"] == "train-bad":  # the named fault: this loop's decision raises for one task
            raise RuntimeError("injected fault on train-bad")
        return list(real(t, **kwargs))

    monkeypatch.setattr(app_module, decide, injected)
    before = trainer.get("train-bad")["status"]
    for name, step in trainer.steps():
        if name == loop:
            await step()
    await trainer.ctx.runner.wait_for(await trainer.ctx.store.last_seq())
    assert trainer.get("train-good")["status"] == after
    assert trainer.get("train-bad")["status"] == before
    assert trainer.ctx.counters.get(LOOP_ITEM_FAILURES, loop=loop) == 1
    assert trainer.ctx.counters.get(LOOP_STEP_FAILURES) == 0
