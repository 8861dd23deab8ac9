"""Scheduler application layer: commands (load -> decide -> append) and queries on the read models."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select

from capstan_core.batching import BatchedLookup
from capstan_core.clock import Clock, SystemClock
from capstan_core.command import execute
from capstan_core.contracts.scheduling import (
    NODE,
    RSG,
    WORKLOAD,
    HealthCheckResult,
    WorkloadInstancesLost,
    WorkloadRequeued,
)
from capstan_core.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from capstan_core.ids import new_id, stable_id
from capstan_core.loops import LoopGuard
from capstan_core.paging import next_token, page_bounds
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .active_work import ActiveWork
from .domain.aggregates import (
    HEALTH_ABNORMAL_PREFIX,
    HISTORY_STATES,
    NODE_STATES_IN_USE,
    decide_create_rg,
    decide_delete_rg,
    decide_health,
    decide_join,
    decide_node_state,
    decide_release,
    decide_remove_record,
    decide_share_rg,
    decide_update_rg,
    fold_node,
    fold_rg,
)
from .node_auth import NodeAuth, node_id_for
from .queue_view import QueueReport, explain
from .settings import SchedulerSettings
from .snapshot import GroupPlan, Reuse, build_plans
from .tables import allocations, node_health_checks, nodes, resource_groups, workloads


def _parse_policy(policy_json: str | None) -> dict[str, Any] | None:
    if not policy_json:
        return None
    try:
        policy = json.loads(policy_json)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"policy is not valid JSON: {e.msg}", field="policy") from e
    if not isinstance(policy, dict):
        raise InvalidArgument("policy must be a JSON object", field="policy")
    return policy


@dataclass
class Liveness:
    """Heartbeats are not events: they are kept in memory; only state changes are appended."""

    last_seen_ms: dict[str, int]
    started_ms: int


class SchedulerApp:
    def __init__(self, ctx: ServiceContext, clock: Clock | None = None, settings: SchedulerSettings | None = None) -> None:
        self.ctx = ctx
        self.clock = clock or SystemClock()
        self.liveness = Liveness({}, self.clock.now_ms())
        settings = settings or SchedulerSettings()
        self.abnormal_after_ms = int(settings.node_abnormal_after_s * 1000)
        self.lost_after_ms = int(settings.node_lost_after_s * 1000)
        self.shareable = settings.shareable
        self.health_record_every_ms = int(settings.health_record_every_s * 1000)
        self.node_auth = NodeAuth(ctx, self.clock)
        # Group names are unique within a tenant (two tenants may each have a group "x"): creates and
        # renames check the read model and append under this lock,
        # and wait for the read model to hold what they appended before releasing it, so two
        # concurrent creates of one name cannot both pass the check (one scheduler process owns groups).
        self.names_lock = asyncio.Lock()
        # heartbeats read their node's state in batches, off the event loop
        self._node_states: BatchedLookup[str, tuple[str, str]] = BatchedLookup(self._read_node_states, "heartbeats")
        # the scheduler's node loops: one node (or workload) that fails is set aside, the others go on
        self._silent = LoopGuard("scheduler.silent_nodes", ctx.counters)
        self._lost = LoopGuard("scheduler.lost_nodes", ctx.counters)
        self._releases = LoopGuard("scheduler.releases", ctx.counters)

    # -- commands --------------------------------------------------------------------
    async def create_resource_group(
        self, *, name: str, description: str, tags: dict[str, str], policy_json: str, creator: str, idempotency_key: str,
        tenant: str = "",
    ) -> dict[str, Any]:
        policy = _parse_policy(policy_json)
        rg_id = stable_id("rsg", creator, idempotency_key) if idempotency_key else new_id("rsg")
        now = self.clock.now_ms()
        async with self.names_lock:
            outcome = await execute(
                self.ctx.store,
                event_subject(RSG, rg_id),
                fold_rg,
                lambda rg: decide_create_rg(
                    rg, rg_id=rg_id, name=name, description=description, tags=tags, policy=policy, creator=creator,
                    now_ms=now, name_taken_by=self._group_named(name, tenant=tenant, other_than=rg_id), tenant=tenant,
                ),
                msg_id=f"create-rsg:{rg_id}",
            )
            await self.ctx.await_projection(outcome.seq)
        return self.get_resource_group(rg_id)

    async def update_resource_group(
        self, rg_id: str, *, name: str | None, description: str | None, tags: dict[str, str] | None,
        policy_json: str | None,
    ) -> dict[str, Any]:
        policy = _parse_policy(policy_json) if policy_json is not None else None
        if policy_json is not None and policy is None:
            policy = {}  # an empty policy string resets to the default policy
        now = self.clock.now_ms()
        async with self.names_lock:
            outcome = await execute(
                self.ctx.store, event_subject(RSG, rg_id), fold_rg,
                functools.partial(decide_update_rg, rg_id=rg_id, name=name, description=description, tags=tags,
                                  policy=policy, now_ms=now,
                                  name_taken_by=None if name is None else self._group_named(
                                      name, tenant=self._tenant_of(rg_id), other_than=rg_id)),
            )
            await self.ctx.await_projection(outcome.seq)
        return self.get_resource_group(rg_id)

    async def share_resource_group(self, rg_id: str, tenants: list[str]) -> dict[str, Any]:
        now = self.clock.now_ms()
        outcome = await execute(self.ctx.store, event_subject(RSG, rg_id), fold_rg,
                                functools.partial(decide_share_rg, rg_id=rg_id, tenants=tenants, now_ms=now))
        await self.ctx.await_projection(outcome.seq)
        return self.get_resource_group(rg_id)

    async def delete_resource_group(self, rg_id: str) -> None:
        with self.ctx.engine.connect() as conn:
            in_use = [
                (r.id, r.state)
                for r in conn.execute(
                    select(nodes.c.id, nodes.c.state)
                    .where(nodes.c.resource_group_id == rg_id, nodes.c.state.in_(NODE_STATES_IN_USE))
                    .order_by(nodes.c.id)
                )
            ]
        now = self.clock.now_ms()
        outcome = await execute(
            self.ctx.store, event_subject(RSG, rg_id), fold_rg,
            functools.partial(decide_delete_rg, rg_id=rg_id, nodes_in_use=in_use, now_ms=now),
        )
        await self.ctx.await_projection(outcome.seq)

    async def release_nodes(self, node_ids: list[str]) -> list[dict[str, Any]]:
        """Batch release: every node is checked first, so a refused batch appends nothing."""
        if not node_ids:
            raise InvalidArgument("node_ids must name at least one node", field="node_ids")
        now = self.clock.now_ms()
        for node_id in node_ids:
            recorded, _ = await self.ctx.store.load(event_subject(NODE, node_id))
            decide_release(fold_node([r.event for r in recorded]), node_id=node_id, now_ms=now)
        last = 0
        for node_id in dict.fromkeys(node_ids):
            outcome = await execute(
                self.ctx.store, event_subject(NODE, node_id), fold_node,
                functools.partial(decide_release, node_id=node_id, now_ms=now),
            )
            last = max(last, outcome.seq)
        await self.ctx.await_projection(last)
        return [self.get_node(n) for n in dict.fromkeys(node_ids)]

    async def finish_drained_releases(self) -> None:
        """Releasing nodes with nothing left on them become Released. Service replicas there are moved
        (requeued, placed elsewhere by the next cycle); training runs to its end first."""
        releasing = await asyncio.to_thread(self._node_ids, nodes.c.state == "Releasing")
        await self._replace_service_replicas(releasing, "moved off node {node} (released)", self._releases)
        drained = await asyncio.to_thread(
            self._node_ids, nodes.c.state == "Releasing",
            ~select(allocations.c.node_id).where(allocations.c.node_id == nodes.c.id).exists(),
        )
        now = self.clock.now_ms()
        last = 0
        for node_id in drained:
            async with self._releases.aitem(f"node {node_id}"):
                outcome = await execute(
                    self.ctx.store, event_subject(NODE, node_id), fold_node,
                    functools.partial(decide_node_state, node_id=node_id, state="Released", reason="drained", now_ms=now),
                )
                last = max(last, outcome.seq)
        await self._read_own_writes(last)

    def _node_ids(self, *conditions: Any) -> list[str]:
        with self.ctx.engine.connect() as conn:
            return list(conn.execute(select(nodes.c.id).where(*conditions).order_by(nodes.c.id)).scalars().all())

    async def join_node(
        self, *, rg_id: str, name: str, agent_kind: str, cpu: float, memory_gib: float, gpus: dict[str, int],
        checks: list[HealthCheckResult] | None = None, capabilities: list[str] | None = None,
    ) -> dict[str, Any]:
        self.get_resource_group(rg_id)  # NotFound if the group does not exist
        node_id = node_id_for(rg_id, name)
        now = self.clock.now_ms()
        outcome = await execute(
            self.ctx.store,
            event_subject(NODE, node_id),
            fold_node,
            lambda n: decide_join(
                n, node_id=node_id, rg_id=rg_id, name=name, agent_kind=agent_kind, cpu=cpu, memory_gib=memory_gib,
                gpus=gpus, now_ms=now, checks=checks or (), shareable=self.shareable, capabilities=capabilities or (),
            ),
        )
        self.liveness.last_seen_ms[node_id] = now
        await self.ctx.await_projection(outcome.seq)
        return self.get_node(node_id)

    async def heartbeat(self, node_id: str) -> str:
        now = self.clock.now_ms()
        node = await self._node_states.get(node_id)
        if node is None:
            raise NotFound(f"node {node_id} does not exist; the agent must join again")
        self.liveness.last_seen_ms[node_id] = now
        state, reason = node
        if state == "Abnormal" and not reason.startswith(HEALTH_ABNORMAL_PREFIX):
            outcome = await execute(
                self.ctx.store,
                event_subject(NODE, node_id),
                fold_node,
                lambda n: decide_node_state(n, node_id=node_id, state="Running", reason="heartbeats resumed", now_ms=now),
            )
            await self.ctx.await_projection(outcome.seq)
            return "Running"
        return state

    def _read_node_states(self, node_ids: list[str]) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        with self.ctx.engine.connect() as conn:
            for i in range(0, len(node_ids), 1000):  # bound the statement's parameters
                q = select(nodes.c.id, nodes.c.state, nodes.c.state_reason).where(nodes.c.id.in_(node_ids[i:i + 1000]))
                out.update((r.id, (r.state, r.state_reason or "")) for r in conn.execute(q))
        return out

    async def report_health(self, node_id: str, checks: list[HealthCheckResult]) -> dict[str, Any]:
        """A periodic health check from a node's agent: recorded when its outcome changes (and hourly);
        failing checks make the node Abnormal (no new work), passing ones bring it back."""
        now = self.clock.now_ms()
        self.liveness.last_seen_ms[node_id] = now
        outcome = await execute(
            self.ctx.store, event_subject(NODE, node_id), fold_node,
            functools.partial(decide_health, node_id=node_id, checks=checks, now_ms=now,
                              record_every_ms=self.health_record_every_ms),
        )
        if outcome.seq:
            await self.ctx.await_projection(outcome.seq)
        return self.get_node(node_id)

    async def remove_node_record(self, node_id: str) -> dict[str, Any]:
        """A Released node moves to the group's node history as Unused."""
        now = self.clock.now_ms()
        outcome = await execute(
            self.ctx.store, event_subject(NODE, node_id), fold_node,
            functools.partial(decide_remove_record, node_id=node_id, now_ms=now),
        )
        if outcome.seq:
            await self.ctx.await_projection(outcome.seq)
        return self.get_node(node_id)

    async def mark_silent_nodes_abnormal(self) -> None:
        running = await asyncio.to_thread(self._node_ids, nodes.c.state == "Running")
        now = self.clock.now_ms()  # after the read: heartbeats that arrived meanwhile count
        last = 0
        for node_id in running:
            seen = self.liveness.last_seen_ms.get(node_id, self.liveness.started_ms)
            if now - seen > self.abnormal_after_ms:
                reason = f"no heartbeat for {(now - seen) // 1000}s"
                async with self._silent.aitem(f"node {node_id}"):
                    outcome = await execute(
                        self.ctx.store,
                        event_subject(NODE, node_id),
                        fold_node,
                        functools.partial(decide_node_state, node_id=node_id, state="Abnormal", reason=reason, now_ms=now),
                    )
                    last = max(last, outcome.seq)
        await self._read_own_writes(last)

    async def _read_own_writes(self, seq: int) -> None:
        """The next step reads what this one appended (read-your-writes): without it, whether the lost-node
        step saw a node turned Abnormal a moment ago depended on the projection's timing, and so did its
        decisions (a replay of the same log could decide otherwise)."""
        if seq and not await self.ctx.runner.wait_for(seq, timeout=30):
            raise Unavailable("the scheduler's read models did not catch up with its own appends")

    async def restart_work_of_lost_nodes(self) -> None:
        """Abnormal nodes silent past the lost threshold: every workload placed there is lost."""
        abnormal = await asyncio.to_thread(self._node_ids, nodes.c.state == "Abnormal")
        now = self.clock.now_ms()
        lost = [n for n in abnormal if now - self.liveness.last_seen_ms.get(n, self.liveness.started_ms) > self.lost_after_ms]
        if not lost:
            return
        await self._replace_service_replicas(lost, "replaced: node {node} was lost", self._lost)
        rows = await asyncio.to_thread(self._placed_on, lost, ("placed",), "training")
        done: set[str] = set()
        last = 0
        for wid, seq, node_id in rows:
            if wid in done:
                continue
            done.add(wid)
            async with self._lost.aitem(f"workload {wid}"):
                with contextlib.suppress(Conflict):
                    r = await self.ctx.store.append(
                        event_subject(WORKLOAD, wid), [WorkloadInstancesLost(workload_id=wid, node_id=node_id, at_ms=now)],
                        expected_seq=seq, msg_id=f"lost:{wid}:{seq}",
                    )
                    last = max(last, r.seq)
        await self._read_own_writes(last)

    def _placed_on(self, node_ids: list[str], statuses: tuple[str, ...], kind: str) -> list[tuple[str, int, str]]:
        """(workload id, its subject's sequence, node id) of the unended ``kind`` work placed on these nodes."""
        with self.ctx.engine.connect() as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(
                select(workloads.c.id, workloads.c.subject_seq, allocations.c.node_id)
                .join(allocations, allocations.c.workload_id == workloads.c.id)
                .where(allocations.c.node_id.in_(node_ids), workloads.c.status.in_(statuses),
                       workloads.c.ended.is_(False), workloads.c.kind == kind)
                .order_by(workloads.c.id, allocations.c.idx)
            )]

    async def _replace_service_replicas(self, node_ids: list[str], reason: str, guard: LoopGuard) -> None:
        """Service replicas on these nodes go back to the queue at once (their original order and
        priority kept) and the next cycle places them elsewhere: a replica keeps no state to resume,
        and each replica is its own workload, so the service's other replicas keep serving."""
        if not node_ids:
            return
        now = self.clock.now_ms()
        rows = await asyncio.to_thread(self._placed_on, node_ids, ("placed", "evicting"), "service")
        last = 0
        for wid, seq, node_id in rows:
            events = [WorkloadInstancesLost(workload_id=wid, node_id=node_id, at_ms=now),
                      WorkloadRequeued(workload_id=wid, reason=reason.format(node=node_id), at_ms=now)]
            async with guard.aitem(f"workload {wid}"):
                with contextlib.suppress(Conflict):
                    r = await self.ctx.store.append(
                        event_subject(WORKLOAD, wid), events, expected_seq=seq, msg_id=f"replace:{wid}:{seq}"
                    )
                    last = max(last, r.seq)
        if last:
            await self.ctx.await_projection(last)

    # -- queries ---------------------------------------------------------------------
    def _group_named(self, name: str, *, tenant: str, other_than: str) -> str | None:
        """The id of a live group of ``tenant`` (other than ``other_than``) named ``name``, if any: names are
        unique per tenant, so another tenant's group of that name neither blocks nor is told."""
        with self.ctx.engine.connect() as conn:
            found = conn.execute(
                select(resource_groups.c.id)
                .where(resource_groups.c.name == name, resource_groups.c.tenant == tenant,
                       resource_groups.c.id != other_than)
                .order_by(resource_groups.c.created_at_ms)
                .limit(1)
            ).scalar()
        return None if found is None else str(found)

    def _tenant_of(self, rg_id: str) -> str:
        """The tenant that owns a group ("" when it is not in the read model: the decision says NotFound)."""
        with self.ctx.engine.connect() as conn:
            found = conn.execute(select(resource_groups.c.tenant).where(resource_groups.c.id == rg_id)).scalar()
        return "" if found is None else str(found)

    def get_resource_group(self, rg_id: str, tenant: str = "") -> dict[str, Any]:
        """``tenant``: a user's, who sees its own groups and those shared with it (others do not exist)."""
        with self.ctx.engine.connect() as conn:
            row = conn.execute(select(resource_groups).where(resource_groups.c.id == rg_id)).mappings().first()
            if row is None or (tenant and not usable_by(row, tenant)):
                raise NotFound(f"resource group {rg_id} does not exist")
            count = conn.execute(select(func.count()).select_from(nodes).where(nodes.c.resource_group_id == rg_id)).scalar()
        return {**row, "node_count": int(count or 0)}

    def list_resource_groups(self, page_size: int, page_token: str, tenant: str = "") -> tuple[list[dict[str, Any]], str, int]:
        """``tenant``: a user's: its own groups and those shared with it."""
        size, offset = page_bounds(page_size, page_token)
        conds = []
        if tenant:
            conds.append(or_(resource_groups.c.tenant == tenant,
                             resource_groups.c.shared_with.contains(json.dumps(tenant))))
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(resource_groups).where(*conds)).scalar() or 0)
            rows = conn.execute(
                select(resource_groups).where(*conds)
                .order_by(resource_groups.c.created_at_ms, resource_groups.c.id).limit(size).offset(offset)
            ).mappings().all()
            counts: dict[str, int] = dict(
                conn.execute(select(nodes.c.resource_group_id, func.count()).group_by(nodes.c.resource_group_id)).all()
            )
        items = [{**r, "node_count": int(counts.get(r["id"], 0))} for r in rows]
        return items, next_token(offset, size, total), total

    def plans(self, only: set[str] | None = None) -> dict[str, GroupPlan]:
        """Every resource group's scheduling input (or only these groups'), from the read models."""
        return self.plans_and_rows(only)[0]

    def plans_and_rows(
        self, only: set[str] | None = None, *, work_of_empty_groups: bool = True, reuse: Reuse | None = None,
        with_work: bool = True, active: ActiveWork | None = None, fresh: bool = False,
    ) -> tuple[dict[str, GroupPlan], list[Any]]:
        """The groups' plans and the workload rows they were built from (queued, placed, evicting).
        ``work_of_empty_groups=False`` (a cycle): a group without nodes gets a plan without its workloads,
        which nothing could place or preempt anyway, instead of reading its whole queue every cycle.
        ``with_work=False``: the groups and their nodes only (what admission looks at), no workloads.
        ``active`` (the cycle's): the workloads come from it, brought up to date first (from scratch: ``fresh``)."""
        g_q, n_q = select(resource_groups), select(nodes).where(nodes.c.state != "Released")
        w_q = select(workloads).where(workloads.c.status.in_(("queued", "placed", "evicting")), workloads.c.ended.is_(False))
        a_q = select(allocations)
        if only is not None:
            ids = sorted(only)
            g_q, n_q = g_q.where(resource_groups.c.id.in_(ids)), n_q.where(nodes.c.resource_group_id.in_(ids))
            w_q = w_q.where(workloads.c.resource_group_id.in_(ids))
            a_q = a_q.join(workloads, workloads.c.id == allocations.c.workload_id).where(
                workloads.c.resource_group_id.in_(ids)).with_only_columns(*allocations.c)
        with self.ctx.engine.connect() as conn:
            groups = conn.execute(g_q).mappings().all()
            node_rows = conn.execute(n_q.order_by(nodes.c.id)).mappings().all()
            with_nodes = {n["resource_group_id"] for n in node_rows}
            if not work_of_empty_groups:
                w_q = w_q.where(workloads.c.resource_group_id.in_(sorted(with_nodes)))
            work: list[Any] = []
            allocs: list[Any] = []
            if with_work and active is not None:
                active.refresh(conn, reset=fresh)
                work, allocs = active.of(g["id"] for g in groups if work_of_empty_groups or g["id"] in with_nodes)
            elif with_work:
                work = list(conn.execute(w_q.order_by(workloads.c.submitted_seq)).mappings().all())
                allocs = list(conn.execute(a_q).mappings().all())
        return build_plans(groups, node_rows, work, allocs, self.shareable, reuse), list(work)

    def queue(self, rg_id: str, running_too: bool = False) -> tuple[QueueReport, dict[str, Any]]:
        """The explainable queue of one group, and the workload rows it names (``running_too``: also those
        the node board names, to tell whose they are)."""
        self.get_resource_group(rg_id)  # NotFound for an unknown group
        plan = self.plans()[rg_id]
        if plan.error:
            raise FailedPrecondition(f"resource group {rg_id} cannot be scheduled now: {plan.error}")
        report = explain(plan, self.clock.now_ms())
        with self.ctx.engine.connect() as conn:
            rows = {
                r["id"]: dict(r)
                for r in conn.execute(
                    select(workloads).where(workloads.c.id.in_(
                        [i.workload_id for i in report.items]
                        + ([w for n in report.nodes for w in n.workloads] if running_too else [])))
                ).mappings()
            }
            names = dict(conn.execute(select(nodes.c.id, nodes.c.name).where(nodes.c.resource_group_id == rg_id)).all())
        return report, {"workloads": rows, "node_names": names}

    def get_node(self, node_id: str) -> dict[str, Any]:
        with self.ctx.engine.connect() as conn:
            row = conn.execute(select(nodes).where(nodes.c.id == node_id)).mappings().first()
            if row is None:
                raise NotFound(f"node {node_id} does not exist; the agent must join again")
            return self._node_view(conn, dict(row))

    def list_nodes(
        self, rg_id: str, page_size: int, page_token: str, view: str = "active"
    ) -> tuple[list[dict[str, Any]], str, int]:
        """``view``: "active" (the node list), "history" (DeployFailed and Unused nodes) or "all"."""
        if view not in ("active", "history", "all"):
            raise InvalidArgument("view must be active, history or all", field="view")
        size, offset = page_bounds(page_size, page_token)
        q = select(nodes)
        cq = select(func.count()).select_from(nodes)
        if rg_id:
            q = q.where(nodes.c.resource_group_id == rg_id)
            cq = cq.where(nodes.c.resource_group_id == rg_id)
        if view != "all":
            cond = nodes.c.state.in_(HISTORY_STATES) if view == "history" else nodes.c.state.not_in(HISTORY_STATES)
            q, cq = q.where(cond), cq.where(cond)
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(cq).scalar() or 0)
            rows = conn.execute(q.order_by(nodes.c.joined_at_ms, nodes.c.id).limit(size).offset(offset)).mappings().all()
            items = [self._node_view(conn, dict(r)) for r in rows]
        return items, next_token(offset, size, total), total

    def list_health_checks(
        self, *, rg_id: str, node_id: str, page_size: int, page_token: str
    ) -> tuple[list[dict[str, Any]], str, int]:
        """Health-check records, newest first, of one node or of a group's nodes (or all)."""
        if node_id:
            self.get_node(node_id)
        elif rg_id:
            self.get_resource_group(rg_id)
        size, offset = page_bounds(page_size, page_token)
        conds = []
        if node_id:
            conds.append(node_health_checks.c.node_id == node_id)
        if rg_id:
            conds.append(node_health_checks.c.resource_group_id == rg_id)
        with self.ctx.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(node_health_checks).where(*conds)).scalar() or 0)
            rows = conn.execute(
                select(node_health_checks).where(*conds).order_by(node_health_checks.c.seq.desc()).limit(size).offset(offset)
            ).mappings().all()
        items = [{**r, "checks": json.loads(r["checks"])} for r in rows]
        return items, next_token(offset, size, total), total

    def _node_view(self, conn: Any, row: dict[str, Any]) -> dict[str, Any]:
        allocs = conn.execute(select(allocations).where(allocations.c.node_id == row["id"])).mappings().all()
        gpus_alloc: dict[str, float] = {}
        for a in allocs:
            if a["gpu"] > 0:
                gpus_alloc[a["gpu_type"]] = gpus_alloc.get(a["gpu_type"], 0.0) + a["gpu"]
        return {
            **row,
            "gpus": json.loads(row["gpus"]),
            "capabilities": json.loads(row["capabilities"] or "[]"),
            "cpu_allocated": sum(a["cpu"] for a in allocs),
            "memory_gib_allocated": sum(a["memory_gib"] for a in allocs),
            "gpus_allocated": gpus_alloc,
            "last_heartbeat_ms": self.liveness.last_seen_ms.get(row["id"], 0),
        }

    def node_assignments(self, node_id: str) -> list[dict[str, Any]]:
        with self.ctx.engine.connect() as conn:
            return [dict(r) for r in conn.execute(
                select(allocations).where(allocations.c.node_id == node_id).order_by(allocations.c.workload_id, allocations.c.idx)
            ).mappings()]


def usable_by(row: Any, tenant: str) -> bool:
    """A group is its tenant's, and the tenants the operator shared it with (#8)."""
    return bool(row["tenant"] == tenant or tenant in json.loads(row["shared_with"] or "[]"))
