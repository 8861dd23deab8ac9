"""One scheduling cycle over a Snapshot: pure, deterministic, no clock but the one passed in.

Phases (Kueue's numbered script):
  1. snapshot  -> free capacity (what runs is subtracted; work being evicted still holds its resources)
  2. lanes     -> one queue per (resource group, card type); order P0 first, then submit order
  3. admit     -> walk every pending item in (priority, submit order, id); gate by the lane's queue mode;
                  place all-or-nothing; else, with preemption on, plan victims on the "future" pool
  4. explain   -> a position and a reason for each item left queued, and a summary per lane

Queue modes per lane: 0 strict FIFO (an item that cannot start blocks everything behind it),
1 backfill within a priority (it blocks only lower priorities), 2 backfill across the lane.
A preemptor that got its victims waits for them to leave; the nodes of its plan take no new work this cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .explain import Why, explain
from .model import Decisions, InstanceAssignment, Item, Preemption, Snapshot
from .placement import place_gang
from .preemption import VictimIndex, find_victims
from .priority import BACKFILL_ACROSS, BACKFILL_WITHIN_PRIORITY, STRICT_FIFO
from .state import FreeState


@dataclass
class _Lane:
    blocker: Item | None = None  # the first item of this lane that could not start


@dataclass
class _Cycle:
    snapshot: Snapshot
    mode: int
    preempt: bool
    real: FreeState
    future: FreeState | None = None
    index: VictimIndex | None = None
    lanes: dict[tuple[str, str, str], _Lane] = field(default_factory=dict)  # (group, card type, capability)
    reserved: set[str] = field(default_factory=set)
    victims: set[str] = field(default_factory=set)
    failed: set[tuple[object, ...]] = field(default_factory=set)
    lacking: dict[str, frozenset[str]] = field(default_factory=dict)  # capability -> nodes that do not declare it
    unpreemptable: set[tuple[object, ...]] = field(default_factory=set)
    placements: dict[str, tuple[InstanceAssignment, ...]] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)
    why: dict[str, Why] = field(default_factory=dict)

    def gate(self, item: Item) -> Why | None:
        """Whether the lane's queue mode holds ``item`` back behind an earlier item."""
        b = self.lanes.setdefault(self.lane(item), _Lane()).blocker
        if b is None or self.mode == BACKFILL_ACROSS:
            return None
        if self.mode == STRICT_FIFO:
            return Why("fifo", blocker=b.id)
        if self.mode == BACKFILL_WITHIN_PRIORITY and item.priority > b.priority:
            return Why("priority_block", blocker=b.id, blocker_priority=b.priority)
        return None

    @staticmethod
    def lane(item: Item) -> tuple[str, str, str]:
        """Items that may go on different nodes never hold each other back: the lane includes the capability."""
        return (*item.lane, item.capability)

    def unable(self, item: Item) -> frozenset[str]:
        """The nodes that do not declare ``item``'s capability (it never goes there, nor evicts anything there)."""
        if not item.capability:
            return frozenset()
        lacking = self.lacking.get(item.capability)
        if lacking is None:
            lacking = self.lacking[item.capability] = frozenset(
                n.id for n in self.snapshot.nodes if item.capability not in n.capabilities)
        return lacking

    def future_pool(self) -> FreeState:
        if self.future is None:
            self.future = self.real.copy()
            for r in self.snapshot.running:
                if r.evicting:
                    self.future.release(r)
        return self.future

    def admit(self, item: Item) -> None:
        held = self.gate(item)
        if held is not None:
            self.why[item.id] = held
            return
        key = (item.resource_group, item.request, item.instance_count, item.capability)
        unable = self.unable(item)
        fit = None
        if key not in self.failed:
            skip = _Either(self.reserved, unable) if unable else self.reserved
            fit = place_gang(self.real.in_group(item.resource_group), item.request, item.instance_count, skip)
        if fit is not None:
            self.placements[item.id] = fit
            if self.future is not None:
                self.future.apply(item.request, fit, -1)
            return
        self.failed.add(key)
        lane = self.lanes[self.lane(item)]
        lane.blocker = lane.blocker or item
        if not self.preempt:
            self.why[item.id] = Why("no_fit", preemption="off")
            return
        future = self.future_pool()
        pkey = (*key, item.priority)
        if self.index is None:
            self.index = VictimIndex(self.snapshot.running)
        plan = None if pkey in self.unpreemptable else find_victims(
            future, item, self.snapshot.running, self.victims, skip=unable, index=self.index, take=True)
        if plan is None:
            self.unpreemptable.add(pkey)
            self.why[item.id] = Why("no_fit", preemption="no_victims")
            return
        if plan.victims:  # room freed: what found no victims may now; a plan without victims only takes room
            self.unpreemptable.clear()
        for v in plan.victims:
            self.victims.add(v.item.id)
            self.preemptions.append(Preemption(v.item.id, item.id))
            future.release(v)
        if plan.victims:  # without victims, find_victims left its assignment taken
            future.apply(item.request, plan.assignment, -1)
        self.reserved.update(a.node_id for a in plan.assignment)
        self.why[item.id] = Why("waiting_victims", victims=tuple(v.item.id for v in plan.victims))


@dataclass(frozen=True)
class _Either:
    """Membership in either of two sets, without building their union."""

    a: Container[str]
    b: Container[str]

    def __contains__(self, x: object) -> bool:
        return x in self.a or x in self.b


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """A cycle allocates many short-lived objects and makes no reference cycles (reference counting frees
    them), so the cyclic collector's passes over a large heap are pure cost: pause it while deciding."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def schedule(snapshot: Snapshot, policy_mode: int, preemption_on: bool, now: int, explained: bool = True) -> Decisions:
    """Decide one cycle: which pending items start where, which running tasks to evict, why the rest wait
    (``explained=False``: not why; ``Decisions.queued`` and ``lanes`` are left empty, the rest is the same)."""
    if policy_mode not in (STRICT_FIFO, BACKFILL_WITHIN_PRIORITY, BACKFILL_ACROSS):
        raise ValueError("policy_mode must be 0, 1 or 2")
    ids = [i.id for i in snapshot.pending]
    if len(set(ids)) != len(ids):
        raise ValueError("pending item ids must be unique")
    with _no_cyclic_gc():
        cycle = _Cycle(snapshot, policy_mode, bool(preemption_on), FreeState.build(snapshot.nodes, snapshot.running))
        for item in sorted(snapshot.pending, key=lambda i: i.order_key):
            cycle.admit(item)
        queued, lanes = explain(snapshot, cycle.real, cycle.why) if explained else ({}, ())
    return Decisions(
        at=now, placements=cycle.placements, preemptions=tuple(cycle.preemptions), queued=queued, lanes=lanes
    )
