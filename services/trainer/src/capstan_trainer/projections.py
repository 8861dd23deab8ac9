"""Fold training-task events, and the scheduler's facts about them, into the trainer's read models."""

from __future__ import annotations

import json
from functools import singledispatchmethod

from sqlalchemy import Connection, delete, select, update

from capstan_core.contracts.scheduling import (
    WorkloadInstancesLost,
    WorkloadPlaced,
    WorkloadPreemptionRequested,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadReleased,
    WorkloadRequeued,
)
from capstan_core.contracts.task_status import TaskStatus, advance
from capstan_core.contracts.training import (
    TrainingInstanceExited,
    TrainingInstanceStarted,
    TrainingTaskDeleted,
    TrainingTaskEnded,
    TrainingTaskPreempting,
    TrainingTaskRequeued,
    TrainingTaskRestarting,
    TrainingTaskStopRequested,
    TrainingTaskSubmitted,
    TrainingTaskTagsUpdated,
)
from capstan_core.events import Event
from capstan_core.eventstore import RecordedEvent
from capstan_core.projection import Projection

from .domain.form import form_of
from .tables import training_instances as inst
from .tables import training_tasks as tasks


def _status(conn: Connection, task_id: str) -> str | None:
    return conn.execute(select(tasks.c.status).where(tasks.c.id == task_id)).scalar()


def _advance(conn: Connection, task_id: str, event: Event, **values: object) -> str | None:
    """Move the task's status with the one state machine (``task_status.advance``); ``values`` are set
    with it only when the status changes. The new status (None: no such task)."""
    current = _status(conn, task_id)
    new = advance(current, event)
    if new is not None and new != current:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(status=new.value, **values))
    return new


class TrainerProjection(Projection):
    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        self._apply(rec.event, conn, rec)

    @singledispatchmethod
    def _apply(self, event: Event, conn: Connection, rec: RecordedEvent) -> None:
        """Other events are not the trainer's business."""

    @_apply.register
    def _(self, e: TrainingTaskSubmitted, conn: Connection, rec: RecordedEvent) -> None:
        if _status(conn, e.task_id) is not None:
            return
        conn.execute(
            tasks.insert().values(
                id=e.task_id, name=e.name, resource_group_id=e.resource_group_id, command=e.command,
                hyperparameters=json.dumps(e.hyperparameters, sort_keys=True), cpu=e.resources.cpu,
                memory_gib=e.resources.memory_gib, gpu_type=e.resources.gpu_type, gpu=e.resources.gpu,
                instance_count=e.instance_count, stop_grace_seconds=e.stop_grace_seconds,
                tags=json.dumps(e.tags, sort_keys=True), creator=e.creator, tenant=e.tenant, status=TaskStatus.SUBMITTING.value, placement="none",
                stop_requested=False, exit_code=None, failure_reason="", created_at_ms=e.at_ms, queued_at_ms=0,
                started_at_ms=0, ended_at_ms=0, submitted_seq=rec.seq, attempt=0, preemptions=0, restarts=0,
                max_restarts=e.max_restarts, restarts_used=0, network=e.network,
                form=json.dumps(form_of(e), sort_keys=True),
            )
        )
        for i in range(e.instance_count):
            conn.execute(inst.insert().values(task_id=e.task_id, idx=i, node_id="", status="Pending", exit_code=None))

    @_apply.register
    def _(self, e: WorkloadQueued, conn: Connection, rec: RecordedEvent) -> None:
        _advance(conn, e.workload_id, e, queued_at_ms=e.at_ms)
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="queued"))

    @_apply.register
    def _(self, e: WorkloadRejected, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="rejected", failure_reason=e.reason))

    @_apply.register
    def _(self, e: WorkloadPlaced, conn: Connection, rec: RecordedEvent) -> None:
        _advance(conn, e.workload_id, e)
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="placed"))
        for p in e.placements:
            conn.execute(update(inst).where(inst.c.task_id == e.workload_id, inst.c.idx == p.index).values(node_id=p.node_id))

    @_apply.register
    def _(self, e: WorkloadPreemptionRequested, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="evicting"))

    @_apply.register
    def _(self, e: WorkloadInstancesLost, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="lost"))

    @_apply.register
    def _(self, e: WorkloadRequeued, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="queued"))

    @_apply.register
    def _(self, e: TrainingTaskPreempting, conn: Connection, rec: RecordedEvent) -> None:
        _advance(conn, e.task_id, e)

    @_apply.register
    def _(self, e: TrainingTaskRequeued, conn: Connection, rec: RecordedEvent) -> None:
        _advance(conn, e.task_id, e)
        conn.execute(
            update(tasks).where(tasks.c.id == e.task_id)
            # "requeued" until the scheduler's WorkloadRequeued: the eviction asked for is done.
            .values(attempt=e.attempt, queued_at_ms=e.at_ms, placement="requeued",
                    preemptions=tasks.c.preemptions + (1 if e.cause == "preempted" else 0),
                    restarts=tasks.c.restarts + (1 if e.cause != "preempted" else 0),
                    restarts_used=tasks.c.restarts_used + (1 if e.cause == "failed" else 0))
        )
        conn.execute(update(inst).where(inst.c.task_id == e.task_id).values(node_id="", status="Pending", exit_code=None))

    @_apply.register
    def _(self, e: TrainingTaskRestarting, conn: Connection, rec: RecordedEvent) -> None:
        # The failed attempt's other instances are leaving; a TrainingTaskRequeued follows.
        _advance(conn, e.task_id, e)

    @_apply.register
    def _(self, e: WorkloadReleased, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.workload_id).values(placement="released"))

    @_apply.register
    def _(self, e: TrainingInstanceStarted, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(inst).where(inst.c.task_id == e.task_id, inst.c.idx == e.index).values(status="Running", node_id=e.node_id))
        _advance(conn, e.task_id, e)
        conn.execute(update(tasks).where(tasks.c.id == e.task_id, tasks.c.started_at_ms == 0).values(started_at_ms=e.at_ms))

    @_apply.register
    def _(self, e: TrainingInstanceExited, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(
            update(inst).where(inst.c.task_id == e.task_id, inst.c.idx == e.index)
            .values(status="Exited", exit_code=e.exit_code, node_id=e.node_id)
        )

    @_apply.register
    def _(self, e: TrainingTaskStopRequested, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.task_id).values(stop_requested=True))
        _advance(conn, e.task_id, e)

    @_apply.register
    def _(self, e: TrainingTaskEnded, conn: Connection, rec: RecordedEvent) -> None:
        values: dict[str, object] = dict(exit_code=e.exit_code, ended_at_ms=e.at_ms)
        if e.reason:
            values["failure_reason"] = e.reason
        _advance(conn, e.task_id, e, **values)

    @_apply.register
    def _(self, e: TrainingTaskTagsUpdated, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(tasks).where(tasks.c.id == e.task_id).values(tags=json.dumps(e.tags, sort_keys=True)))

    @_apply.register
    def _(self, e: TrainingTaskDeleted, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(delete(inst).where(inst.c.task_id == e.task_id))
        conn.execute(delete(tasks).where(tasks.c.id == e.task_id))
