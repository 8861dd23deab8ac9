"""One workload the scheduling core cannot handle never stops the decisions for its group (issue #7).

The core decides a group's pending items one at a time in ``order_key`` order, and an item's turn depends
only on the items before it. So when ``schedule`` raises on a group, the item it raises on is the last of
the shortest prefix of that order on which it raises: found by bisection (about log2(n) runs of the core
on prefixes, only when the core fails), set aside with the error, and the group is decided again without
it. The cycle rejects the items set aside (``WorkloadRejected`` with the error as reason); the queue view
shows them with the same reason. Deterministic: the same snapshot sets aside the same items.
"""

from __future__ import annotations

from .domain.core import Decisions, Item, Snapshot, preemption_on, schedule
from .snapshot import GroupPlan, error_text

# More than this many failing items in one group is not a bad item but a broken group (or core).
MAX_SET_ASIDE = 8


def _decide(plan: GroupPlan, pending: list[Item], now: int, explained: bool) -> Decisions:
    snapshot = Snapshot(nodes=plan.snapshot.nodes, running=plan.snapshot.running, pending=tuple(pending))
    return schedule(snapshot, plan.mode, preemption_on(plan.policy), now, explained)


def _error_of(plan: GroupPlan, pending: list[Item], now: int, explained: bool) -> BaseException | None:
    try:
        _decide(plan, pending, now, explained)
    except Exception as e:
        return e
    return None


def schedule_isolating(plan: GroupPlan, now: int, explained: bool = True) -> tuple[Decisions, dict[str, str]]:
    """The core's decisions for one group, and the pending items set aside because the core raises on
    them (id -> error). Raises when the core fails without any pending item (on the group's nodes or
    running work), or on more than ``MAX_SET_ASIDE`` items. ``explained=False`` (the cycle, which appends
    placements and preemptions only): no reasons for the items left queued."""
    pending = sorted(plan.snapshot.pending, key=lambda i: i.order_key)
    set_aside: dict[str, str] = {}
    while True:
        try:
            decisions = _decide(plan, pending, now, explained)
        except Exception:
            if len(set_aside) >= MAX_SET_ASIDE or _error_of(plan, [], now, explained) is not None:
                raise
        else:
            return decisions, set_aside
        # smallest k with the prefix pending[:k] failing: prefix lo passes, prefix hi fails
        lo, hi = 0, len(pending)
        error: BaseException | None = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            e = _error_of(plan, pending[:mid], now, explained)
            if e is None:
                lo = mid
            else:
                hi, error = mid, e
        error = error or _error_of(plan, pending[:hi], now, explained)
        if error is None:  # not reproducible on a prefix: the failure is not one item's
            raise RuntimeError(f"the scheduling core fails on resource group {plan.resource_group}")
        culprit = pending.pop(hi - 1)
        set_aside[culprit.id] = error_text(error)
