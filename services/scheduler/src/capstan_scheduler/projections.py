"""Fold every event the scheduler cares about into its SQL read models."""

from __future__ import annotations

import json
from functools import singledispatchmethod

from sqlalchemy import Connection, delete, select, update

from capstan_core.contracts.scheduling import (
    NodeHealthChecked,
    NodeJoined,
    NodeStateChanged,
    ResourceGroupCreated,
    ResourceGroupDeleted,
    ResourceGroupShared,
    ResourceGroupUpdated,
    WorkloadInstancesLost,
    WorkloadPlaced,
    WorkloadPreemptionRequested,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadReleased,
    WorkloadRequeued,
    WorkloadSubmitted,
    WorkloadWithdrawn,
    node_capabilities,
)
from capstan_core.contracts.training import TrainingTaskRequeued
from capstan_core.events import Event
from capstan_core.eventstore import RecordedEvent
from capstan_core.projection import Projection

from .tables import allocations, node_health_checks, nodes, resource_groups, workloads


def _upsert(conn: Connection, table, key: dict, values: dict) -> None:  # type: ignore[no-untyped-def]
    where = [table.c[k] == v for k, v in key.items()]
    if conn.execute(update(table).where(*where).values(**values)).rowcount == 0:
        conn.execute(table.insert().values(**key, **values))


class SchedulerProjection(Projection):
    def apply(self, conn: Connection, rec: RecordedEvent) -> None:
        self._apply(rec.event, conn, rec)

    @singledispatchmethod
    def _apply(self, event: Event, conn: Connection, rec: RecordedEvent) -> None:
        """Events of other kinds are not the scheduler's business."""

    @_apply.register
    def _(self, e: ResourceGroupCreated, conn: Connection, rec: RecordedEvent) -> None:
        _upsert(
            conn,
            resource_groups,
            {"id": e.rg_id},
            dict(name=e.name, description=e.description, tags=json.dumps(e.tags, sort_keys=True),
                 policy=json.dumps(e.policy, sort_keys=True), creator=e.creator, created_at_ms=e.at_ms,
                 tenant=e.tenant),
        )

    @_apply.register
    def _(self, e: ResourceGroupShared, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(resource_groups).where(resource_groups.c.id == e.rg_id).values(
            shared_with=json.dumps(sorted(e.tenants))))

    @_apply.register
    def _(self, e: ResourceGroupUpdated, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(
            update(resource_groups).where(resource_groups.c.id == e.rg_id).values(
                name=e.name, description=e.description, tags=json.dumps(e.tags, sort_keys=True),
                policy=json.dumps(e.policy, sort_keys=True),
            )
        )

    @_apply.register
    def _(self, e: ResourceGroupDeleted, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(delete(resource_groups).where(resource_groups.c.id == e.rg_id))

    @_apply.register
    def _(self, e: NodeJoined, conn: Connection, rec: RecordedEvent) -> None:
        _upsert(
            conn,
            nodes,
            {"id": e.node_id},
            dict(resource_group_id=e.resource_group_id, name=e.name, agent_kind=e.agent_kind, state="Deploying",
                 state_reason="", cpu=e.cpu, memory_gib=e.memory_gib, gpus=json.dumps(e.gpus, sort_keys=True),
                 joined_at_ms=e.at_ms, state_changed_at_ms=e.at_ms,
                 shareable=None if e.shareable is None else json.dumps(sorted(e.shareable)),
                 capabilities=json.dumps(node_capabilities(e.agent_kind, e.capabilities))),
        )

    @_apply.register
    def _(self, e: NodeStateChanged, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(
            update(nodes).where(nodes.c.id == e.node_id).values(state=e.state, state_reason=e.reason, state_changed_at_ms=e.at_ms)
        )

    @_apply.register
    def _(self, e: NodeHealthChecked, conn: Connection, rec: RecordedEvent) -> None:
        rg = conn.execute(select(nodes.c.resource_group_id).where(nodes.c.id == e.node_id)).scalar()
        _upsert(
            conn, node_health_checks, {"seq": rec.seq},
            dict(node_id=e.node_id, resource_group_id=rg or "", ok=e.ok, trigger=e.trigger,
                 checks=json.dumps([c.model_dump() for c in e.checks]), at_ms=e.at_ms),
        )

    @staticmethod
    def _submitted(conn: Connection, rec: RecordedEvent, workload_id: str, kind: str, **values: object) -> None:
        _upsert(
            conn, workloads, {"id": workload_id},
            dict(kind=kind, status="submitted", submitted_seq=rec.seq, changed_seq=rec.seq, ended=False, subject_seq=0,
                 trace_parent=rec.headers.get("traceparent", ""), reason="", started_at_ms=0, requeue=False, **values),
        )

    @_apply.register
    def _(self, e: WorkloadSubmitted, conn: Connection, rec: RecordedEvent) -> None:
        # The scheduler's own contract, whoever appends it (the trainer for a task, the inference service for
        # a replica) and on whichever subject.
        r = e.resources
        self._submitted(conn, rec, e.workload_id, e.kind, resource_group_id=e.resource_group_id, cpu=r.cpu,
                        memory_gib=r.memory_gib, gpu_type=r.gpu_type, gpu=r.gpu, instance_count=e.instance_count,
                        submitted_at_ms=e.at_ms, tags=json.dumps(e.tags, sort_keys=True), capability=e.capability,
                        tenant=e.tenant)

    @_apply.register
    def _(self, e: WorkloadWithdrawn, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(workloads).where(workloads.c.id == e.workload_id).values(changed_seq=rec.seq, ended=True))

    @_apply.register
    def _(self, e: TrainingTaskRequeued, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(workloads).where(workloads.c.id == e.task_id).values(changed_seq=rec.seq, requeue=True))

    @_apply.register
    def _(self, e: WorkloadPreemptionRequested, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(workloads).where(workloads.c.id == e.workload_id).values(changed_seq=rec.seq, status="evicting", subject_seq=rec.seq))

    @_apply.register
    def _(self, e: WorkloadInstancesLost, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(workloads).where(workloads.c.id == e.workload_id).values(changed_seq=rec.seq, status="evicting", subject_seq=rec.seq))

    @_apply.register
    def _(self, e: WorkloadRequeued, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(
            update(workloads).where(workloads.c.id == e.workload_id)
            .values(changed_seq=rec.seq, status="queued", subject_seq=rec.seq, requeue=False, started_at_ms=0)
        )
        conn.execute(delete(allocations).where(allocations.c.workload_id == e.workload_id))

    @_apply.register
    def _(self, e: WorkloadQueued, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(workloads).where(workloads.c.id == e.workload_id).values(changed_seq=rec.seq, status="queued", subject_seq=rec.seq))

    @_apply.register
    def _(self, e: WorkloadRejected, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(
            update(workloads).where(workloads.c.id == e.workload_id).values(changed_seq=rec.seq, status="rejected", reason=e.reason, subject_seq=rec.seq)
        )

    @_apply.register
    def _(self, e: WorkloadPlaced, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(
            update(workloads).where(workloads.c.id == e.workload_id)
            .values(changed_seq=rec.seq, status="placed", subject_seq=rec.seq, started_at_ms=e.at_ms)
        )
        r = e.resources
        for p in e.placements:
            conn.execute(
                allocations.insert().values(workload_id=e.workload_id, idx=p.index, node_id=p.node_id, kind=e.kind,
                                            cpu=r.cpu, memory_gib=r.memory_gib, gpu_type=r.gpu_type, gpu=r.gpu,
                                            cards=json.dumps([list(c) for c in p.cards]))
            )

    @_apply.register
    def _(self, e: WorkloadReleased, conn: Connection, rec: RecordedEvent) -> None:
        conn.execute(update(workloads).where(workloads.c.id == e.workload_id).values(changed_seq=rec.seq, status="released", subject_seq=rec.seq))
        conn.execute(delete(allocations).where(allocations.c.workload_id == e.workload_id))
