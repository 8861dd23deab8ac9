"""The indexed victim search gives exactly the answers of the plain search it replaced (kept here as reference)."""

from __future__ import annotations

import importlib.util
from collections.abc import Container, Sequence
from itertools import combinations
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

from capstan_scheduler.domain.core import Item, Running, Snapshot
from capstan_scheduler.domain.core.placement import Assignment, place_gang
from capstan_scheduler.domain.core.preemption import PAIR_SEARCH_MAX, Plan, VictimIndex, candidates, find_victims
from capstan_scheduler.domain.core.state import FreeState


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_capstan_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_props = _sibling("test_core_properties")


def _fits(base: FreeState, item: Item, evict: Sequence[Running], skip: Container[str]) -> Assignment | None:
    for r in evict:
        base.release(r)
    try:
        if item.instance_count == 1 and evict:
            ids = sorted({a.node_id for r in evict for a in r.assignment if a.node_id in base.nodes})
            nodes = [base.nodes[i] for i in ids if base.nodes[i].rg == item.resource_group]
        else:
            nodes = list(base.in_group(item.resource_group))  # a plain list: placement walks every node
        fit = place_gang(nodes, item.request, item.instance_count, skip)
        if fit is not None:
            base.apply(item.request, fit, +1)
        return fit
    finally:
        for r in evict:
            base.release(r, sign=-1)


def reference(base: FreeState, item: Item, running: Sequence[Running], excluded: Container[str],
              skip: Container[str] = ()) -> Plan | None:
    fit = _fits(base, item, (), skip)
    if fit is not None:
        return Plan((), fit)
    cands = candidates(item, running, excluded)
    if not cands or _fits(base, item, cands, skip) is None:
        return None
    for size in (1, 2):
        if size == 2 and len(cands) > PAIR_SEARCH_MAX:
            break
        for combo in combinations(cands, size):
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


def _free(base: FreeState) -> dict[str, tuple[int, int, dict[str, list[int]], dict[str, int]]]:
    return {k: (n.cpu, n.mem, {t: list(v) for t, v in n.free.items()}, dict(n.whole)) for k, n in base.nodes.items()}


def _check(snap: Snapshot, excluded: set[str], skip: set[str]) -> None:
    base = FreeState.build(snap.nodes, snap.running)
    index = VictimIndex(snap.running)
    for it in snap.pending:
        before = _free(base)
        want = reference(base, it, snap.running, excluded, skip)
        got = find_victims(base, it, snap.running, excluded, skip, index=index)
        assert got == want, it
        assert _free(base) == before  # the pool is left as it was


@given(_props.snapshots(), st.data())
@_props.SETTINGS
def test_same_victims_as_the_plain_search(snap: Snapshot, data: st.DataObject) -> None:
    ids = [r.item.id for r in snap.running]
    excluded = set(data.draw(st.lists(st.sampled_from(ids), max_size=2))) if ids else set()
    nodes = [n.id for n in snap.nodes]
    skip = set(data.draw(st.lists(st.sampled_from(nodes), max_size=1))) if nodes else set()
    _check(snap, excluded, skip)


def test_same_victims_on_a_full_pool() -> None:
    from capstan_scheduler.domain import core
    from capstan_scheduler.sim import full_pool

    snap = full_pool.build(core, 40, 60)
    _check(snap, set(), set())
    _check(snap, {r.item.id for r in snap.running[::3]}, {"n00001", "n00007"})
