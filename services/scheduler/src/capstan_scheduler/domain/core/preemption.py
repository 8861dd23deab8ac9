"""Choose victims for a waiting item (SPEC §7.2, services first).

Victims are running TRAINING items of the same resource group, strictly lower priority than the
preemptor (numerically greater), not already being evicted. Services are never victims, so a task
never preempts a service and a service never preempts a service.

Order of candidates: lowest priority first, then youngest (latest started), then id. As few victims as
possible: first the first single candidate that makes the gang fit (on a simulated copy of the pool), then
the first pair (when there are at most PAIR_SEARCH_MAX candidates); else victims are added in order until
the gang fits and any the gang can do without is dropped again (last added first), so the set is at
least minimal: no victim can be spared.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from itertools import combinations

from .model import Item, Running
from .placement import Assignment, place_gang
from .state import FreeState

PAIR_SEARCH_MAX = 24  # above this many candidates, pairs are not searched exhaustively


@dataclass(frozen=True)
class Plan:
    victims: tuple[Running, ...]
    assignment: Assignment  # where the preemptor will go once its victims (and earlier evictions) have left


def candidates(preemptor: Item, running: Sequence[Running], excluded: Container[str]) -> list[Running]:
    """Eligible victims in the order they are tried."""
    out = [
        r for r in running
        if r.item.kind == "training" and not r.evicting and r.item.id not in excluded
        and r.item.resource_group == preemptor.resource_group and r.item.priority > preemptor.priority
    ]
    out.sort(key=lambda r: (-r.item.priority, -r.started_at, r.item.id))
    return out


def _fits(base: FreeState, item: Item, evict: Sequence[Running], skip: Container[str]) -> Assignment | None:
    """Where ``item`` would go once ``evict`` left ``base``; ``base`` is released, tried and restored in place.
    Nothing fits on ``base`` itself, so a single instance can only land on a node the evictions touch."""
    for r in evict:
        base.release(r)
    try:
        if item.instance_count == 1 and evict:
            ids = sorted({a.node_id for r in evict for a in r.assignment if a.node_id in base.nodes})
            nodes = [base.nodes[i] for i in ids if base.nodes[i].rg == item.resource_group]
        else:
            nodes = base.in_group(item.resource_group)
        fit = place_gang(nodes, item.request, item.instance_count, skip)
        if fit is not None:
            base.apply(item.request, fit, +1)
        return fit
    finally:
        for r in evict:
            base.release(r, sign=-1)


def find_victims(
    base: FreeState, item: Item, running: Sequence[Running], excluded: Container[str], skip: Container[str] = ()
) -> Plan | None:
    """The minimal victim set that lets ``item`` fit on ``base`` (the pool as it will be once work already
    being evicted has left), or None when evicting every eligible victim would still not make room.
    ``Plan.victims`` is empty when the pending evictions alone make room."""
    fit = _fits(base, item, (), skip)
    if fit is not None:
        return Plan((), fit)
    cands = candidates(item, running, excluded)
    if not cands or _fits(base, item, cands, skip) is None:
        return None
    for size in (1, 2):
        if size == 2 and len(cands) > PAIR_SEARCH_MAX:
            break
        for combo in combinations(cands, size):  # in preference order
            fit = _fits(base, item, combo, skip)
            if fit is not None:
                return Plan(combo, fit)
    chosen: list[Running] = []
    for r in cands:
        chosen.append(r)
        if _fits(base, item, chosen, skip) is not None:
            break
    for r in reversed(list(chosen)):
        trial = [c for c in chosen if c is not r]
        if _fits(base, item, trial, skip) is not None:
            chosen = trial
    fit = _fits(base, item, chosen, skip)
    assert fit is not None
    return Plan(tuple(chosen), fit)
