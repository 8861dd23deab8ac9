"""The scheduling cycle, level-triggered from the read models (Kueue-style numbered phases).

1. admit: submitted workloads -> WorkloadQueued (or WorkloadRejected with a reason);
2. release: ended workloads -> WorkloadReleased (frees their allocations);
3. snapshot: per resource group, its nodes, running work and queue (``snapshot.py``);
4. place: the pure scheduling core (``domain/core``) decides with the group's queue
   mode and priorities: lanes per card type, gangs all-or-nothing, GPU work packed
   onto cards (fractions share a card), CPU work spread;
5. wait until the read models hold what was appended, so the next cycle's
   snapshot includes it (no double allocation).
Every append carries an expected sequence on the workload's subject, so a
restarted or duplicated scheduler cannot place a workload twice.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from sqlalchemy import select

from capstan_core import tracing
from capstan_core.contracts.common import ResourceSpec
from capstan_core.contracts.scheduling import (
    WORKLOAD,
    InstancePlacement,
    WorkloadPlaced,
    WorkloadPreemptionRequested,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadReleased,
    WorkloadRequeued,
)
from capstan_core.errors import Conflict, Unavailable
from capstan_core.events import Event
from capstan_core.eventstore import AppendResult
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .app import SchedulerApp
from .domain.core import FreeState, place_gang, preemption_on, schedule
from .snapshot import GroupPlan, request_of
from .tables import resource_groups, workloads

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, app: SchedulerApp) -> None:
        self.app = app
        self.ctx: ServiceContext = app.ctx
        self._tracer = tracing.tracer("scheduler")

    async def _append(self, w: dict[str, Any], events: list[Event], msg_id: str) -> AppendResult | None:
        """Append on the workload's subject, continuing the trace of the submission."""
        ctx = tracing.extract({"traceparent": w["trace_parent"]} if w["trace_parent"] else {})
        with tracing.attached(ctx), self._tracer.start_as_current_span(f"schedule {events[0].TYPE}"):
            try:
                return await self.ctx.store.append(
                    event_subject(WORKLOAD, w["id"]), events, expected_seq=w["subject_seq"], msg_id=msg_id
                )
            except Conflict:
                return None  # the read model was stale; the next cycle sees the truth

    async def cycle(self) -> None:
        now = self.app.clock.now_ms()
        appended: list[int] = []
        with self.ctx.engine.connect() as conn:
            pending = conn.execute(
                select(workloads).where(workloads.c.status.in_(("submitted", "queued", "placed", "evicting")))
                .order_by(workloads.c.submitted_seq)
            ).mappings().all()
            groups = {r["id"] for r in conn.execute(select(resource_groups.c.id)).mappings()}

        admission_plans = self.app.plans()

        # 1-2. admit and release
        for w in pending:
            if w["ended"]:
                r = await self._append(dict(w), [WorkloadReleased(workload_id=w["id"], at_ms=now)], f"release:{w['id']}")
            elif w["requeue"] and w["status"] in ("placed", "evicting"):
                back = WorkloadRequeued(workload_id=w["id"], reason="preempted", at_ms=now)
                r = await self._append(dict(w), [back], f"requeue:{w['id']}:{w['subject_seq']}")
            elif w["status"] == "queued" and w["resource_group_id"] not in groups:
                gone = WorkloadRejected(workload_id=w["id"], reason=f"resource group {w['resource_group_id']} was deleted", at_ms=now)
                r = await self._append(dict(w), [gone], f"reject:{w['id']}")
            elif w["status"] == "submitted":
                reason = _reject_reason(w, admission_plans)
                ev: Event = (
                    WorkloadRejected(workload_id=w["id"], reason=reason, at_ms=now) if reason
                    else WorkloadQueued(workload_id=w["id"], kind=w["kind"], resource_group_id=w["resource_group_id"], at_ms=now)
                )
                r = await self._append(dict(w), [ev], f"admit:{w['id']}")
            else:
                continue
            if r is not None:
                appended.append(r.seq)

        # 3-4. per resource group: snapshot, then the scheduling core decides (queue mode from the policy)
        by_id: dict[str, Any] = {w["id"]: w for w in pending}
        for plan in self.app.plans().values():
            decisions = schedule(plan.snapshot, plan.mode, preemption_on(plan.policy), now)
            for p in decisions.preemptions:
                victim = by_id.get(p.victim_id)
                if victim is None or victim["status"] != "placed" or victim["ended"]:
                    continue
                ask = WorkloadPreemptionRequested(workload_id=p.victim_id, preemptor_id=p.preemptor_id, at_ms=now)
                r = await self._append(dict(victim), [ask], f"preempt:{p.victim_id}:{victim['subject_seq']}")
                if r is not None:
                    appended.append(r.seq)
            for item_id in sorted(decisions.placements, key=lambda i: plan.items[i].order_key):
                row = by_id.get(item_id)
                if row is None or row["ended"] or row["status"] != "queued":
                    continue
                placed = WorkloadPlaced(
                    workload_id=item_id, kind=row["kind"],
                    resources=ResourceSpec(
                        cpu=row["cpu"], memory_gib=row["memory_gib"], gpu_type=row["gpu_type"], gpu=row["gpu"]
                    ),
                    placements=[
                        InstancePlacement(index=i, node_id=a.node_id, cards=a.cards)
                        for i, a in enumerate(decisions.placements[item_id])
                    ],
                    at_ms=now,
                )
                r = await self._append(dict(row), [placed], f"place:{item_id}:{row['subject_seq']}")
                if r is not None:
                    appended.append(r.seq)

        # 5. read-your-writes before the next cycle
        if appended:
            if not await self.ctx.runner.wait_for(max(appended), timeout=30):
                raise Unavailable("scheduler read models did not catch up with its own appends")

    async def step(self) -> None:
        await self.cycle()
        await self.app.mark_silent_nodes_abnormal()
        await self.app.restart_work_of_lost_nodes()
        await self.app.finish_drained_releases()


def _reject_reason(w: Any, plans: dict[str, GroupPlan]) -> str:
    """Why a submitted workload can never run in its group, or "" (it may wait, but it fits some day)."""
    plan = plans.get(w["resource_group_id"])
    if plan is None:
        return f"resource group {w['resource_group_id']} does not exist"
    nodes = plan.snapshot.nodes
    if not nodes:
        return ""  # no machine yet: wait for one to join
    request = request_of(w)
    empty = FreeState.build([replace(n, state="Running") for n in nodes], [])
    if place_gang(empty.in_group(plan.resource_group), request, 1) is not None:
        return ""
    what = f"cpu {request.cpu}, memory {request.memory_gib} GiB"
    if request.gpu_tenths:
        what += f", {request.gpu_tenths / 10:g} x {request.gpu_type}"
        if request.fractional and not any(request.gpu_type in n.shareable for n in nodes):
            return f"{request.gpu_type} cards are not shareable in {plan.resource_group}; ask for whole cards"
    return f"no node of {plan.resource_group} can ever hold one instance ({what})"
