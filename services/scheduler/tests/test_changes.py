"""Which groups a cycle must decide again (``changes.py``): what makes cycles incremental."""

from __future__ import annotations

from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import (
    NodeHealthChecked,
    NodeJoined,
    NodeStateChanged,
    ResourceGroupUpdated,
    WorkloadPlaced,
    WorkloadQueued,
    WorkloadReleased,
    WorkloadSubmitted,
    WorkloadWithdrawn,
)
from capstan_core.contracts.training import TrainingInstanceStarted, TrainingTaskSubmitted
from capstan_core.events import Event
from capstan_core.eventstore import RecordedEvent
from capstan_scheduler.changes import Changes


def _batch(changes: Changes, *events: Event, subject: str = "s.x") -> None:
    changes.on_batch(0, [RecordedEvent(seq=i + 1, index=0, subject=subject, event=e, time_ms=0)
                         for i, e in enumerate(events)])


def _submitted(task: str, rg: str) -> WorkloadSubmitted:
    return WorkloadSubmitted(workload_id=task, kind="training", capability="training", resource_group_id=rg,
                             resources=ResourceSpec(cpu=1, memory_gib=1), at_ms=0)


def test_an_owners_own_events_change_nothing_its_workload_contract_does() -> None:
    c = Changes()
    c.take()
    task = TrainingTaskSubmitted(task_id="t1", name="t1", resource_group_id="rsg-a", command="true", hyperparameters={},
                                 resources=ResourceSpec(cpu=1, memory_gib=1), instance_count=1, tags={}, creator="u",
                                 stop_grace_seconds=30, at_ms=0)
    _batch(c, task, subject="capstan.evt.train.t1")  # the trainer's own event: not the scheduler's input
    assert c.take() == set()
    _batch(c, task, _submitted("t1", "rsg-a"), subject="capstan.evt.train.t1")  # the contract, on any subject
    assert c.take() == {"rsg-a"}


def test_the_first_take_is_every_group_then_only_what_changed() -> None:
    c = Changes()
    assert c.take() is None  # the first cycle decides every group
    assert c.take() == set()  # nothing happened since
    _batch(c, _submitted("t1", "rsg-a"), TrainingInstanceStarted(task_id="t0", index=0, node_id="n", at_ms=0),
           NodeHealthChecked(node_id="n", ok=True, trigger="periodic", checks=[], at_ms=0))
    assert c.take() == {"rsg-a"}  # reports and health records change no group
    _batch(c, WorkloadQueued(workload_id="t1", kind="training", resource_group_id="rsg-a", at_ms=0),
           ResourceGroupUpdated(rg_id="rsg-b", name="b", description="", tags={}, policy={}, at_ms=0),
           NodeJoined(node_id="n2", resource_group_id="rsg-c", name="n2", agent_kind="trainer", cpu=1, memory_gib=1,
                      gpus={}, at_ms=0))
    assert c.take() == {"rsg-a", "rsg-b", "rsg-c"}


def test_a_workload_event_marks_its_group_and_what_cannot_be_placed_marks_all() -> None:
    c = Changes()
    c.take()
    c.learn([{"id": "t9", "resource_group_id": "rsg-z"}])  # known from a read of the read models
    _batch(c, WorkloadWithdrawn(workload_id="t9", at_ms=0))
    assert c.take() == {"rsg-z"}
    _batch(c, WorkloadReleased(workload_id="t9", at_ms=0))
    assert c.take() == {"rsg-z"}
    _batch(c, WorkloadWithdrawn(workload_id="t9", at_ms=0))  # released: forgotten
    assert c.take() is None
    _batch(c, NodeStateChanged(node_id="n", state="Abnormal", reason="silent", at_ms=0))  # a node: every group
    assert c.take() is None


def test_a_cycles_own_decisions_do_not_mark_its_group_but_a_failed_one_does() -> None:
    c = Changes()
    c.take()
    c.learn([{"id": "t1", "resource_group_id": "rsg-a"}, {"id": "t2", "resource_group_id": "rsg-a"}])
    placed = WorkloadPlaced(workload_id="t1", kind="training", resources=ResourceSpec(cpu=1, memory_gib=1),
                            placements=[], at_ms=0)
    c.expect([("t1", "WorkloadPlaced"), ("t2", "WorkloadPlaced")])
    _batch(c, placed)
    c.forget_expected()  # t2's append did not land: the cycle marks its group itself
    c.mark({"rsg-a"})
    assert c.take() == {"rsg-a"}
    _batch(c, placed)  # the same event again, no longer expected: someone else's change
    assert c.take() == {"rsg-a"}
    c.mark(None)
    assert c.take() is None
