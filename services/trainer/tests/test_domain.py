"""The training-task aggregate as tables: histories of events in, the events a command decides out.
Focus: the auto-restart budget (SPEC 3.1) and how it meets stops, evictions and lost nodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from capstan_core.contracts.capacity import MAX_NODE_CARDS, MAX_NODE_CPU, MAX_NODE_MEMORY_GIB
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import WorkloadSubmitted, WorkloadWithdrawn
from capstan_core.contracts.training import (
    TrainingInstanceExited,
    TrainingInstanceStarted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskRestarting,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
)
from capstan_core.errors import InvalidArgument
from capstan_core.events import Event, decode, encode
from capstan_trainer.domain.task import (
    SubmitTrainingTask,
    decide_end,
    decide_preempting,
    decide_report,
    decide_restart_lost,
    decide_submit,
    fold,
)

T = "train-abc"
RES = ResourceSpec(cpu=1, memory_gib=1)


def submitted(max_restarts: int = 0, instances: int = 1) -> TrainingTaskSubmitted:
    return TrainingTaskSubmitted(
        task_id=T, name="t", resource_group_id="rsg-1", command="x", hyperparameters={}, resources=RES,
        instance_count=instances, tags={}, creator="me", stop_grace_seconds=30, at_ms=1, max_restarts=max_restarts,
    )


def started(i: int = 0) -> TrainingInstanceStarted:
    return TrainingInstanceStarted(task_id=T, index=i, node_id="n1", at_ms=2)


def exited(i: int, code: int) -> TrainingInstanceExited:
    return TrainingInstanceExited(task_id=T, index=i, node_id="n1", exit_code=code, at_ms=3)


def requeued(attempt: int, cause: str) -> TrainingTaskRequeued:
    return TrainingTaskRequeued(task_id=T, attempt=attempt, reason=cause, at_ms=4, cause=cause)


def restarting(attempt: int, restart: int, index: int = 0) -> TrainingTaskRestarting:
    return TrainingTaskRestarting(task_id=T, attempt=attempt, index=index, exit_code=1, restart=restart,
                                  reason="instance 0 exited with code 1", at_ms=3)


def own(events: Sequence[Event]) -> list[Event]:
    """The trainer's own events of a decision (without the scheduler's workload contract beside them)."""
    return [e for e in events if not isinstance(e, WorkloadSubmitted | WorkloadWithdrawn)]


def report(history: Sequence[Event], index: int, code: int, attempt: int = 0) -> list[Event]:
    return own(decide_report(fold(history), task_id=T, index=index, node_id="n1", state="Exited", exit_code=code,
                             message="", now_ms=10, attempt=attempt))


def shape(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """What matters in a decision: the types, and for requeues, restarts and ends their key fields."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, TrainingTaskRequeued):
            out.append(("Requeued", e.attempt, e.cause))
        elif isinstance(e, TrainingTaskRestarting):
            out.append(("Restarting", e.attempt, e.index, e.exit_code, e.restart))
        elif isinstance(e, TrainingTaskEnded):
            out.append(("Ended", e.status, e.exit_code))
        elif isinstance(e, TrainingInstanceExited):
            out.append(("Exited", e.index, e.exit_code))
        else:
            out.append((e.TYPE,))
    return out


# (case, history, index, exit code, attempt reported, expected decision)
CASES: list[tuple[str, list[Event], int, int, int, list[tuple[Any, ...]]]] = [
    ("budget off: a failure fails the task", [submitted(0), started()], 0, 7, 0,
     [("Exited", 0, 7), ("Ended", "Failed", 7)]),
    ("budget left, one instance: restart and requeue at once", [submitted(2), started()], 0, 7, 0,
     [("Exited", 0, 7), ("Restarting", 0, 0, 7, 1), ("Requeued", 1, "failed")]),
    ("second failure, budget of 2: restart 2", [submitted(2), requeued(1, "failed"), started()], 0, 3, 1,
     [("Exited", 0, 3), ("Restarting", 1, 0, 3, 2), ("Requeued", 2, "failed")]),
    ("budget used: Failed", [submitted(1), requeued(1, "failed"), started()], 0, 3, 1,
     [("Exited", 0, 3), ("Ended", "Failed", 3)]),
    ("evictions do not use the budget", [submitted(1), requeued(1, "preempted"), requeued(2, "preempted"), started()],
     0, 3, 2, [("Exited", 0, 3), ("Restarting", 2, 0, 3, 1), ("Requeued", 3, "failed")]),
    ("lost nodes do not use the budget", [submitted(1), requeued(1, "node_lost"), started()], 0, 3, 1,
     [("Exited", 0, 3), ("Restarting", 1, 0, 3, 1), ("Requeued", 2, "failed")]),
    ("exit 0 still succeeds", [submitted(1), started()], 0, 0, 0, [("Exited", 0, 0), ("Ended", "Succeeded", 0)]),
    ("two instances: the failure waits for the other one to leave", [submitted(1, 2), started(0), started(1)], 1, 5, 0,
     [("Exited", 1, 5), ("Restarting", 0, 1, 5, 1)]),
    ("two instances: the last one out requeues, whatever its code",
     [submitted(1, 2), started(0), started(1), exited(1, 5), restarting(0, 1, index=1)], 0, 143, 0,
     [("Exited", 0, 143), ("Requeued", 1, "failed")]),
    ("a second failure while restarting is not a second restart",
     [submitted(3, 3), exited(1, 5), restarting(0, 1, index=1)], 0, 9, 0, [("Exited", 0, 9)]),
    ("stopping wins over the budget", [submitted(1), started(), TrainingTaskStopRequested(task_id=T, by="u", at_ms=3)],
     0, 143, 0, [("Exited", 0, 143), ("Ended", "Stopped", None)]),
    ("a stop while restarting ends Stopped",
     [submitted(1, 2), exited(1, 5), restarting(0, 1, index=1), TrainingTaskStopRequested(task_id=T, by="u", at_ms=3)],
     0, 143, 0, [("Exited", 0, 143), ("Ended", "Stopped", None)]),
    ("a non-zero exit while preempting is an eviction, not a restart",
     [submitted(1), started(), TrainingTaskPreempting(task_id=T, attempt=0, preemptor_id="", at_ms=3)], 0, 143, 0,
     [("Exited", 0, 143), ("Requeued", 1, "preempted")]),
    ("a late report about the failed attempt changes nothing",
     [submitted(1, 2), exited(1, 5), restarting(0, 1, index=1), exited(0, 143), requeued(1, "failed")], 1, 1, 0, []),
]


@pytest.mark.parametrize(("history", "index", "code", "attempt", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exit_reports(history: list[Event], index: int, code: int, attempt: int, expected: list[tuple[Any, ...]]) -> None:
    assert shape(report(history, index, code, attempt)) == expected


def test_failed_past_the_budget_says_so() -> None:
    out = report([submitted(1), requeued(1, "failed")], 0, 3, attempt=1)
    end = out[-1]
    assert isinstance(end, TrainingTaskEnded)
    assert end.reason == "instance 0 exited with code 3; all 1 automatic restart(s) used"
    # without a budget the reason is what it always was
    end = report([submitted(0)], 0, 3)[-1]
    assert isinstance(end, TrainingTaskEnded) and end.reason == "instance 0 exited with code 3"


def test_the_agents_reason_replaces_the_bare_exit_code() -> None:
    out = own(decide_report(fold([submitted(0)]), task_id=T, index=0, node_id="n1", state="Exited", exit_code=137,
                            message="out of memory (limit 1 GiB)", now_ms=10))
    end = out[-1]
    assert isinstance(end, TrainingTaskEnded) and end.exit_code == 137
    assert end.reason == "instance 0: out of memory (limit 1 GiB)"


def test_the_restart_event_says_which_restart_of_how_many() -> None:
    out = report([submitted(3), requeued(1, "failed")], 0, 2, attempt=1)
    r = out[1]
    assert isinstance(r, TrainingTaskRestarting)
    assert (r.restart, r.reason) == (2, "instance 0 exited with code 2; automatic restart 2 of 3")
    assert out[2] == TrainingTaskRequeued(task_id=T, attempt=2, reason=r.reason, at_ms=10, cause="failed")


def test_fold_counts_only_failures_against_the_budget() -> None:
    t = fold([submitted(5), requeued(1, "preempted"), requeued(2, "node_lost"), requeued(3, "failed"),
              restarting(3, 2)])
    assert (t.attempt, t.restarts_used, t.max_restarts) == (3, 1, 5)
    assert t.restarting is not None
    assert fold([submitted(5), requeued(1, "failed"), restarting(1, 2), requeued(2, "failed")]).restarting is None


@pytest.mark.parametrize(("history", "expected"), [
    ([submitted(1), started()], [("Requeued", 1, "node_lost")]),
    # the failed attempt had its restart granted: the lost node does not turn it into a free one
    ([submitted(1, 2), exited(1, 5), restarting(0, 1, index=1)], [("Requeued", 1, "failed")]),
])
def test_lost_node(history: list[Event], expected: list[tuple[Any, ...]]) -> None:
    assert shape(decide_restart_lost(fold(history), task_id=T, reason="lost", now_ms=5)) == expected


def test_no_eviction_of_an_attempt_already_restarting() -> None:
    t = fold([submitted(1, 2), exited(1, 5), restarting(0, 1, index=1)])
    assert decide_preempting(t, task_id=T, preemptor_id="", now_ms=5) == []


def _submit(max_restarts: int) -> list[Event]:
    cmd = SubmitTrainingTask(task_id=T, name="t", resource_group_id="rsg-1", command="x", hyperparameters_json="",
                             resources=RES, instance_count=1, tags={}, creator="me", stop_grace_seconds=30,
                             max_restarts=max_restarts)
    return decide_submit(fold([]), cmd, 1)


@pytest.mark.parametrize("n", [0, 1, 10])
def test_max_restarts_accepted(n: int) -> None:
    e, _ = _submit(n)
    assert isinstance(e, TrainingTaskSubmitted) and e.max_restarts == n


@pytest.mark.parametrize("n", [-1, 11, 1000])
def test_max_restarts_refused(n: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        _submit(n)
    assert err.value.field == "max_restarts" and "max_restarts" in str(err.value)


def test_events_written_before_the_budget_still_read() -> None:
    raw = encode(submitted(0))
    del raw["data"]["max_restarts"]  # as an older trainer wrote it
    old = decode(raw)
    assert isinstance(old, TrainingTaskSubmitted) and old.max_restarts == 0
    assert fold([old]).max_restarts == 0


def evicted(history: Sequence[Event], index: int, code: int = 143) -> list[Event]:
    return own(decide_report(fold(history), task_id=T, index=index, node_id="n1", state="Evicted", exit_code=code,
                             message="stopped with the platform (capstan down); requeued", now_ms=10, attempt=0))


def test_the_scheduler_learns_of_the_task_by_its_own_contract_in_the_same_commit() -> None:
    """A submit is also a WorkloadSubmitted (capability "training"), an end a WorkloadWithdrawn; a requeue
    stays the trainer's TrainingTaskRequeued."""
    sub = decide_submit(fold([]), SubmitTrainingTask(
        task_id=T, name="t", resource_group_id="rsg-1", command="x", hyperparameters_json="", resources=RES,
        instance_count=2, tags={"p": "1"}, creator="me", stop_grace_seconds=30), 1)
    assert [e.TYPE for e in sub] == ["TrainingTaskSubmitted", "WorkloadSubmitted"]
    w = sub[1]
    assert isinstance(w, WorkloadSubmitted)
    assert (w.workload_id, w.kind, w.capability, w.resource_group_id, w.resources, w.instance_count, w.tags) == (
        T, "training", "training", "rsg-1", RES, 2, {"p": "1"})
    out = decide_report(fold([submitted(), started()]), task_id=T, index=0, node_id="n1", state="Exited", exit_code=0,
                        message="", now_ms=10)
    assert [e.TYPE for e in out] == ["TrainingInstanceExited", "TrainingTaskEnded", "WorkloadWithdrawn"]
    assert out[-1] == WorkloadWithdrawn(workload_id=T, reason="Succeeded", at_ms=10)
    assert [e.TYPE for e in decide_end(fold([submitted()]), task_id=T, status="Failed", reason="rejected", now_ms=3)] == [
        "TrainingTaskEnded", "WorkloadWithdrawn"]
    assert [e.TYPE for e in report([submitted(2), started()], 0, 7)][-1] == "TrainingTaskRequeued"


def test_a_platform_stop_is_an_eviction_never_a_failure_or_a_restart() -> None:
    """`capstan down` stopped the instance: the attempt leaves (the others get SIGTERM) and the task is
    requeued as an eviction, even with no restart budget and whatever the exit code."""
    one = evicted([submitted(), started(0)], 0)
    assert [type(e) for e in one] == [TrainingInstanceExited, TrainingTaskPreempting, TrainingTaskRequeued]
    requeue = one[-1]
    assert isinstance(requeue, TrainingTaskRequeued) and requeue.cause == "preempted" and requeue.attempt == 1
    assert "capstan down" in requeue.reason
    # two instances: the first eviction makes the attempt leave; the other instance's exit (whatever
    # its code) then completes the requeue instead of failing the task
    first = evicted([submitted(instances=2), started(0), started(1)], 0)
    assert [type(e) for e in first] == [TrainingInstanceExited, TrainingTaskPreempting]
    rest = report([submitted(instances=2), started(0), started(1), *first], 1, 143)
    assert [type(e) for e in rest] == [TrainingInstanceExited, TrainingTaskRequeued]
    assert fold([submitted(), started(0), *one]).restarts_used == 0
    # a user's stop still wins
    stopped = evicted([submitted(), started(0), TrainingTaskStopRequested(task_id=T, by="u", at_ms=5)], 0)
    assert isinstance(stopped[-1], TrainingTaskEnded) and stopped[-1].status == "Stopped"


def test_a_preempting_event_written_before_it_had_a_reason_still_reads() -> None:
    raw = {"type": "TrainingTaskPreempting", "version": 1,
           "data": {"task_id": T, "attempt": 0, "preemptor_id": "train-x", "at_ms": 1}}
    e = decode(raw)
    assert isinstance(e, TrainingTaskPreempting) and e.reason == "preempted"
    assert decide_preempting(fold([submitted(), e]), task_id=T, preemptor_id="y", now_ms=2) == []


def _submit_with(resources: ResourceSpec, hyperparameters_json: str = "") -> list[Event]:
    cmd = SubmitTrainingTask(task_id=T, name="t", resource_group_id="rsg-1", command="x",
                             hyperparameters_json=hyperparameters_json, resources=resources, instance_count=1, tags={},
                             creator="me", stop_grace_seconds=30)
    return decide_submit(fold([]), cmd, 1)


@pytest.mark.parametrize(
    ("resources", "field", "message"),
    [
        (ResourceSpec(cpu=float("inf")), "resources.cpu", "resources.cpu must be a finite number"),
        (ResourceSpec(cpu=float("nan")), "resources.cpu", "resources.cpu must be a finite number"),
        (ResourceSpec(cpu=1e308), "resources.cpu", f"resources.cpu must be at most {MAX_NODE_CPU} cores"),
        (ResourceSpec(memory_gib=1e308), "resources.memory_gib", f"resources.memory_gib must be at most {MAX_NODE_MEMORY_GIB}"),
        (ResourceSpec(gpu_type="A100", gpu=9007199254740994), "resources.gpu", f"resources.gpu must be at most {MAX_NODE_CARDS}"),
        (ResourceSpec(gpu_type="A100", gpu=0), "resources.gpu", "resources.gpu_type 'A100' is set but resources.gpu is 0"),
        (ResourceSpec(gpu=1), "resources.gpu_type", "resources.gpu_type is required when resources.gpu > 0"),
        (ResourceSpec(gpu_type="A100", gpu=1.5), "resources.gpu", "resources.gpu must be 0.1..1 in steps of 0.1"),
    ],
)
def test_a_request_no_node_could_hold_is_refused(resources: ResourceSpec, field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _submit_with(resources)
    assert err.value.field == field and err.value.message.startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"lr": NaN}', "hyperparameters.lr: must be a finite number"),
        ('{"lr": -Infinity}', "hyperparameters.lr: must be a finite number"),
        ('{"lr": [1e400]}', "hyperparameters.lr[0]: must be a finite number"),
        ('{"n": 99999999999999999999999}', "hyperparameters.n: integers must fit in 64 bits"),
        ("[" * 100_000 + "]" * 100_000, "hyperparameters: nested deeper than"),
    ],
)
def test_hyperparameters_no_store_can_hold_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        _submit_with(RES, text)
    assert err.value.message.startswith(message)


def test_the_largest_request_a_node_may_hold_is_accepted() -> None:
    e, _ = _submit_with(ResourceSpec(cpu=MAX_NODE_CPU, memory_gib=MAX_NODE_MEMORY_GIB, gpu_type="A100", gpu=MAX_NODE_CARDS))
    assert isinstance(e, TrainingTaskSubmitted) and e.resources.gpu == MAX_NODE_CARDS
