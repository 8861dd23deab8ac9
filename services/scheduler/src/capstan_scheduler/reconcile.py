"""The scheduling cycle, level-triggered from the read models (Kueue-style numbered phases).

1. admit: submitted workloads -> WorkloadQueued (or WorkloadRejected with a reason);
2. release: ended workloads -> WorkloadReleased (frees their allocations);
3. snapshot: per resource group, its nodes, running work and queue (``snapshot.py``);
4. place: the pure scheduling core (``domain/core``) decides with the group's queue
   mode and priorities: lanes per card type, gangs all-or-nothing, GPU work packed
   onto cards (fractions share a card), CPU work spread;
5. append what was decided, then wait until the read models hold it, so the next
   phase sees it: what phases 1-2 admit or free is placed in the same cycle, and
   the next cycle's snapshot includes every placement (no double allocation).
Every append carries an expected sequence on the workload's subject, so a
restarted or duplicated scheduler cannot place a workload twice.

The reads, snapshot building and the core run in the scheduler's own thread, so the event loop keeps serving RPCs and heartbeats
while a large cycle decides; phase 5 runs on the loop.

One bad item never stops the cycle (issue #7): a workload whose row or request
cannot be handled, or that the core raises on (``isolation.py``), is rejected
with the error as its reason; a group that cannot be planned is skipped (and
counted) while the other groups are decided as usual. The scheduler's other
steps (silent nodes, lost nodes, drained releases) run even when the cycle fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import and_, or_, select

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
from capstan_core.loops import LoopGuard, Step, is_infrastructure, run_steps
from capstan_core.service import ServiceContext
from capstan_core.streams import event_subject

from .active_work import ActiveWork
from .app import SchedulerApp
from .changes import FULL_EVERY_S, Changes, union
from .domain.core import FreeState, Node, Request, place_gang
from .isolation import schedule_isolating
from .snapshot import GroupPlan, Reuse, error_text, request_of
from .tables import resource_groups, workloads

log = logging.getLogger(__name__)
CYCLE = "scheduler.cycle"
APPEND_WINDOW = 64  # decisions appended at once (pipelined, in order)
SETTLED = frozenset({"WorkloadPlaced", "WorkloadRejected"})  # decisions after which the group needs no new look
T = TypeVar("T")


@dataclass(frozen=True)
class View:
    """One read of the read models: the workloads phases 1-2 look at (in submit order), every group's id,
    the plans of the groups this cycle decides, and the workload rows those plans were built from."""

    rows: list[Mapping[str, Any]]
    groups: set[str]
    plans: dict[str, GroupPlan]
    planned: dict[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Intent:
    """One commit the cycle decided to append on a workload's subject."""

    workload: Mapping[str, Any]  # its row: id, subject_seq (the expected sequence), trace_parent
    events: tuple[Event, ...]
    msg_id: str


def _rejected(w: Mapping[str, Any], reason: str, now: int) -> Intent:
    return Intent(w, (WorkloadRejected(workload_id=w["id"], reason=reason, at_ms=now),), f"reject:{w['id']}")


def _cannot_handle(error: str) -> str:
    return f"the scheduler cannot handle this workload: {error}"


class Scheduler:
    def __init__(self, app: SchedulerApp) -> None:
        self.app = app
        self.ctx: ServiceContext = app.ctx
        self._tracer = tracing.tracer("scheduler")
        self.guard = LoopGuard(CYCLE, app.ctx.counters)
        # Incremental cycles: only the groups whose input changed are decided (changes.py).
        self.changes = Changes()
        app.ctx.runner.on_batch(self.changes.on_batch)
        self._full_at = 0.0
        # objects built from rows, for the next read (only in the scheduler's thread): a full one, and phase 1-2's
        self._reuse, self._reuse_nodes = Reuse(), Reuse()
        # the active workloads, read again only where they changed; from scratch with every full cycle
        self._active, self._fresh = ActiveWork(), True
        # Its own thread: a long cycle never waits behind slow queries, nor they behind it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-cycle")

    def steps(self) -> list[Step]:
        """The scheduler's control loop: each step runs even when another fails."""
        return [
            (CYCLE, self.cycle),
            ("scheduler.silent_nodes", self.app.mark_silent_nodes_abnormal),
            ("scheduler.lost_nodes", self.app.restart_work_of_lost_nodes),
            ("scheduler.releases", self.app.finish_drained_releases),
        ]

    async def step(self) -> None:
        await run_steps(self.steps(), self.ctx.counters)

    async def _append(self, intent: Intent) -> AppendResult | None:
        """Append on the workload's subject, continuing the trace of the submission."""
        w = intent.workload
        ctx = tracing.extract({"traceparent": w["trace_parent"]} if w["trace_parent"] else {})
        with tracing.attached(ctx), self._tracer.start_as_current_span(f"schedule {intent.events[0].TYPE}"):
            try:
                return await self.ctx.store.append(
                    event_subject(WORKLOAD, w["id"]), list(intent.events), expected_seq=w["subject_seq"],
                    msg_id=intent.msg_id,
                )
            except Conflict:
                return None  # the read model was stale; the next cycle sees the truth

    async def cycle(self, full: bool = False) -> None:
        """One cycle. Only the groups whose input changed since the last cycle are decided, unless ``full``
        (or the safety net's time has come): every group."""
        now = self.app.clock.now_ms()
        if full or time.monotonic() >= self._full_at:
            self.changes.mark(None)
            self._fresh = True
            self._full_at = time.monotonic() + FULL_EVERY_S
        only = self.changes.take()
        try:
            view = await self._in_thread(self.read, only, False)
            if await self._append_all(await self._in_thread(self.admit_and_release, view, now)):
                # what was just admitted or freed is placed in this cycle
                only = union(only, self.changes.take())
            view = await self._in_thread(self.read, only)
            placed = await self._in_thread(self.place, view, now)
            # placements and rejections leave the group decided; preemption requests do not (the victims
            # leaving change what the queue behind the preemptor can do), so their group is decided again
            self.changes.expect((i.workload["id"], i.events[0].TYPE) for i in placed
                                if i.events[0].TYPE in SETTLED)
            try:
                await self._append_all(placed)
            finally:
                self.changes.forget_expected()
        except BaseException:
            self.changes.mark(None)  # whatever this cycle did not finish, the next one decides from scratch
            self._fresh = True
            raise

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _append_all(self, intents: list[Intent]) -> bool:
        """Append in order, then wait until the read models hold it (read-your-writes). Whether any landed.
        A group with a decision that did not land is decided again next cycle.

        Appends are pipelined, up to ``APPEND_WINDOW`` in flight (a new one as soon as one is acknowledged):
        each is written to the connection in the decisions' order before any acknowledgement is awaited
        (every intent is on a subject of its own), so the log holds them in that order, and a cycle with
        thousands of decisions does not wait for thousands of round trips one after another. One that fails
        (the log is unavailable) stops the rest from starting."""
        appended: list[int] = []
        room = asyncio.Semaphore(APPEND_WINDOW)
        failed = False

        async def one(intent: Intent) -> None:
            nonlocal failed
            r = None
            try:
                async with self.guard.aitem(f"workload {intent.workload['id']}"):
                    r = await self._append(intent)
                    if r is not None:
                        appended.append(r.seq)
            except BaseException:
                failed = True
                raise
            finally:
                room.release()
            if r is None:
                self.changes.mark({intent.workload["resource_group_id"]})

        started: list[asyncio.Future[None]] = []
        for intent in intents:
            await room.acquire()  # returns at once while fewer than APPEND_WINDOW are in flight
            if failed:
                room.release()
                break
            # tasks start in creation order and each writes its message before its first wait
            started.append(asyncio.ensure_future(one(intent)))
        await asyncio.gather(*started)
        if appended and not await self.ctx.runner.wait_for(max(appended), timeout=30):
            raise Unavailable("scheduler read models did not catch up with its own appends")
        return bool(appended)

    def read(self, only: set[str] | None = None, place: bool = True) -> View:
        """What a cycle decides on, read in one go (in the scheduler's thread). Phases 1-2 look at every
        workload that needs admission, release or requeue; phases 3-4 at the groups in ``only`` (None:
        all), plus the groups of the workloads being admitted (their admission reads their group's plan).
        ``place=False`` (phases 1-2 only): the plans hold the groups' nodes, not their work (a cycle that
        admits or frees anything reads again after appending: the work is read once either way)."""
        active = ("queued", "placed", "evicting")
        with self.ctx.engine.connect() as conn:
            groups = {r["id"] for r in conn.execute(select(resource_groups.c.id)).mappings()}
            rows: list[Mapping[str, Any]] = [dict(r) for r in conn.execute(
                select(workloads).where(or_(
                    workloads.c.status == "submitted",
                    and_(workloads.c.status.in_(active), or_(workloads.c.ended.is_(True), workloads.c.requeue.is_(True))),
                    and_(workloads.c.status == "queued",
                         workloads.c.resource_group_id.not_in(select(resource_groups.c.id))),
                )).order_by(workloads.c.submitted_seq)
            ).mappings()]
        if only is not None:
            only = only | {w["resource_group_id"] for w in rows if w["status"] == "submitted"}
        if not place:
            plans, _ = self.app.plans_and_rows({w["resource_group_id"] for w in rows if w["status"] == "submitted"},
                                               reuse=self._reuse_nodes, with_work=False)
            self.changes.learn(rows)
            return View(rows, groups, plans)
        fresh, self._fresh = self._fresh, False
        plans, work = self.app.plans_and_rows(only, work_of_empty_groups=False, reuse=self._reuse, active=self._active,
                                              fresh=fresh)
        planned = {w["id"]: w for w in work}
        self.changes.learn([*rows, *work])
        return View(rows, groups, plans, planned)

    def admit_and_release(self, view: View, now: int) -> list[Intent]:
        """Phases 1-2 (in the scheduler's thread)."""
        intents: list[Intent] = []
        fits = _FitCheck(view.plans)
        for w in view.rows:
            try:
                intent = self._admit_or_release(w, view.groups, fits, now)
            except Exception as e:
                if is_infrastructure(e):
                    raise
                self.guard.item_failed(f"workload {w['id']}", e)
                intent = _rejected(w, _cannot_handle(error_text(e)), now) if w["status"] == "submitted" else None
            if intent is not None:
                intents.append(intent)
        return intents

    def place(self, view: View, now: int) -> list[Intent]:
        """Phases 3-4 (in the scheduler's thread): per resource group, the scheduling core decides with
        the group's queue mode and priorities."""
        by_id = {**view.planned, **{w["id"]: w for w in view.rows}}
        intents: list[Intent] = []
        for plan in view.plans.values():
            intents.extend(self._place(plan, by_id, now))
        return intents

    def _admit_or_release(self, w: Mapping[str, Any], groups: set[str], fits: _FitCheck, now: int) -> Intent | None:
        if w["ended"]:
            return Intent(w, (WorkloadReleased(workload_id=w["id"], at_ms=now),), f"release:{w['id']}")
        if w["requeue"] and w["status"] in ("placed", "evicting"):
            back = WorkloadRequeued(workload_id=w["id"], reason="preempted", at_ms=now)
            return Intent(w, (back,), f"requeue:{w['id']}:{w['subject_seq']}")
        if w["status"] == "queued" and w["resource_group_id"] not in groups:
            return _rejected(w, f"resource group {w['resource_group_id']} was deleted", now)
        if w["status"] == "submitted":
            reason = fits.reject_reason(w)
            if reason:
                return _rejected(w, reason, now)
            queued = WorkloadQueued(workload_id=w["id"], kind=w["kind"], resource_group_id=w["resource_group_id"], at_ms=now)
            return Intent(w, (queued,), f"admit:{w['id']}")
        return None

    def _place(self, plan: GroupPlan, by_id: dict[str, Any], now: int) -> list[Intent]:
        """One group's decisions; a failure is the group's (or one workload's) alone."""
        rg = plan.resource_group
        out: list[Intent] = []
        unusable = dict(plan.unusable)
        decisions = None
        if plan.error:
            self.guard.item_failed(f"resource group {rg}", plan.error)
        else:
            try:
                decisions, set_aside = schedule_isolating(plan, now, explained=False)
                unusable.update(set_aside)
            except Exception as e:
                self.guard.item_failed(f"resource group {rg}", e)
        for wid, error in sorted(unusable.items()):
            self.guard.item_failed(f"workload {wid}", error)
            row = by_id.get(wid)
            if row is not None and row["status"] == "queued" and not row["ended"]:
                out.append(_rejected(row, _cannot_handle(error), now))
        if decisions is None:
            return out
        for p in decisions.preemptions:
            victim = by_id.get(p.victim_id)
            if victim is None or victim["status"] != "placed" or victim["ended"]:
                continue
            ask = WorkloadPreemptionRequested(workload_id=p.victim_id, preemptor_id=p.preemptor_id, at_ms=now)
            out.append(Intent(victim, (ask,), f"preempt:{p.victim_id}:{victim['subject_seq']}"))
        for item_id in sorted(decisions.placements, key=lambda i: plan.items[i].order_key):
            row = by_id.get(item_id)
            if row is None or row["ended"] or row["status"] != "queued":
                continue
            with self.guard.item(f"workload {item_id}"):
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
                out.append(Intent(row, (placed,), f"place:{item_id}:{row['subject_seq']}"))
        return out


class _FitCheck:
    """Whether a submitted workload can ever run in its group: one instance on some node of the group, all
    of it free. Within one cycle each group's empty state is built once and each request shape asked once
    (a cycle may admit 50,000 submissions into a group of 5,000 nodes)."""

    def __init__(self, plans: dict[str, GroupPlan]) -> None:
        self.plans = plans
        self._empty: dict[str, FreeState] = {}
        self._fits: dict[tuple[str, Request], bool] = {}

    def reject_reason(self, w: Any) -> str:
        """Why a submitted workload can never run in its group, or "" (it may wait, but it fits some day)."""
        plan = self.plans.get(w["resource_group_id"])
        if plan is None:
            return f"resource group {w['resource_group_id']} does not exist"
        nodes = plan.snapshot.nodes
        if not nodes:
            return ""  # no machine yet (or the group cannot be planned now): wait
        request = request_of(w)
        rg = plan.resource_group
        fits = self._fits.get((rg, request))
        if fits is None:
            if (empty := self._empty.get(rg)) is None:
                empty = self._empty[rg] = FreeState.build([replace(n, state="Running") for n in nodes], [])
            taken = place_gang(empty.in_group(rg), request, 1)
            if taken is not None:
                empty.apply(request, taken, +1)  # given back: the state stays empty for the next shape
            fits = self._fits[(rg, request)] = taken is not None
        return "" if fits else _never_fits(plan, request, nodes)


def _never_fits(plan: GroupPlan, request: Request, nodes: Sequence[Node]) -> str:
    what = f"cpu {request.cpu}, memory {request.memory_gib} GiB"
    if request.gpu_tenths:
        what += f", {request.gpu_tenths / 10:g} x {request.gpu_type}"
        if request.fractional and not any(request.gpu_type in n.shareable for n in nodes):
            return f"{request.gpu_type} cards are not shareable in {plan.resource_group}; ask for whole cards"
    return f"no node of {plan.resource_group} can ever hold one instance ({what})"
