"""The rolling-update planner (SPEC §6.2 "Rolling update: MaxSurge %, MaxUnavailable %"): pure.

Given a version's desired replica count and its replicas (current = runs the version's newest spec and
is not marked for rebuild; ready = serving), it says how many replicas to add and which to retire next.
Called again after every change, it converges: the desired number of current, ready replicas and
nothing else, never more than ``desired + surge`` replicas at once and never fewer than
``desired - unavailable`` ready ones while any are being replaced (Kubernetes' rounding: surge rounds
up, unavailable down; both zero means surge 1). Scaling in retires not-ready replicas first, then the
newest; outdated replicas that serve nothing go at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ReplicaView:
    replica_id: str
    current: bool
    ready: bool
    order: int  # creation order (larger: newer)


@dataclass(frozen=True)
class Plan:
    add: int
    retire: tuple[str, ...]


def bounds(desired: int, max_surge_pct: int, max_unavailable_pct: int) -> tuple[int, int]:
    """(surge, unavailable) in replicas."""
    surge = math.ceil(desired * max_surge_pct / 100)
    unavailable = math.floor(desired * max_unavailable_pct / 100)
    if surge == 0 and unavailable == 0:
        surge = 1
    return surge, unavailable


def plan(desired: int, replicas: Sequence[ReplicaView], max_surge_pct: int, max_unavailable_pct: int) -> Plan:
    surge, unavailable = bounds(desired, max_surge_pct, max_unavailable_pct)
    current = [r for r in replicas if r.current]
    outdated = [r for r in replicas if not r.current]
    add = max(0, min(desired + surge - len(replicas), desired - len(current)))
    retire: list[ReplicaView] = []
    if len(current) > desired:  # scale in: not ready first, then the newest
        retire += sorted(current, key=lambda r: (r.ready, -r.order))[:len(current) - desired]
    retire += [r for r in outdated if not r.ready]  # they serve nothing: no availability to keep
    gone = {r.replica_id for r in retire}
    ready_left = sum(1 for r in replicas if r.ready and r.replica_id not in gone)
    budget = ready_left - max(0, desired - unavailable)
    old_ready = sorted((r for r in outdated if r.ready), key=lambda r: r.order)
    retire += old_ready[:max(0, budget)]
    return Plan(add, tuple(r.replica_id for r in retire))
