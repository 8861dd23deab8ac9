"""The indexed victim search gives exactly the answers of the plain search it replaced (kept here as reference)."""

from __future__ import annotations

import importlib.util
import random
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


def _evolve(snap: Snapshot, skip: set[str]) -> int:
    """Pending items one after another on one pool, as a cycle goes: each plan found is carried out (its
    victims leave, the item takes its place) before the next item is searched, so the search's caches over the
    pool (the first-gain heaps) must follow every change. Returns how many items needed victims."""
    base = FreeState.build(snap.nodes, snap.running)
    index = VictimIndex(snap.running)
    excluded: set[str] = set()
    with_victims = 0
    for it in snap.pending:
        want = reference(base, it, snap.running, excluded, skip)
        got = find_victims(base, it, snap.running, excluded, skip, index=index)
        assert got == want, it
        if got is not None:
            with_victims += bool(got.victims)
            for v in got.victims:
                excluded.add(v.item.id)
                base.release(v)
            base.apply(it.request, got.assignment, -1)
    return with_victims


@given(_props.snapshots(), st.data())
@_props.SETTINGS
def test_same_victims_as_the_plain_search_while_the_pool_changes(snap: Snapshot, data: st.DataObject) -> None:
    nodes = [n.id for n in snap.nodes]
    _evolve(snap, set(data.draw(st.lists(st.sampled_from(nodes), max_size=1))) if nodes else set())


def test_same_victims_on_a_full_pool_while_it_changes() -> None:
    from capstan_scheduler.domain import core
    from capstan_scheduler.sim import full_pool

    assert _evolve(full_pool.build(core, 60, 120), set()) > 20  # many searches, each on the pool the last left
    assert _evolve(full_pool.build(core, 60, 120), {"n00002", "n00011"}) > 20


def _halves(n_nodes: int, n_pending: int, seed: int) -> Snapshot:
    """Nodes of 8 cards each held by two 4-card trainings of random priorities, and a queue of whole-node
    items, 2-node gangs and smaller work of random priorities: with more than ``PAIR_SEARCH_MAX`` candidates
    a whole node needs the in-order search (its two halves), and memory makes CPU-only work compete."""
    from capstan_scheduler.domain import core

    rng = random.Random(seed)
    nodes, running, pending = [], [], []
    for i in range(n_nodes):
        nid = f"n{i:04d}"
        nodes.append(core.Node(nid, "rg", 64, 512, tuple(core.Card(j, "A100") for j in range(8)),
                               frozenset({"A100"}) if i % 2 else frozenset()))
        for half in (0, 1):
            it = core.Item(f"r{len(running):05d}", "training", "rg", rng.randrange(1, 10), len(running),
                           core.Request(32, 256, "A100", 40))
            running.append(core.Running(it, (core.InstanceAssignment(nid, tuple((4 * half + c, 10) for c in range(4))),),
                                        started_at=rng.randrange(3)))
    shapes = ((80, 1), (80, 1), (80, 2), (40, 1), (10, 1), (5, 1), (0, 1))
    for i in range(n_pending):
        t, count = rng.choice(shapes)
        req = core.Request(8, 32) if not t else core.Request(32 * t // 80, 512 * t // 80, "A100", t)
        pending.append(core.Item(f"p{i:04d}", "training", "rg", rng.randrange(0, 9), 10_000 + i, req, count))
    return core.Snapshot(tuple(nodes), tuple(running), tuple(pending))


def test_same_victims_for_whole_nodes_while_the_pool_changes() -> None:
    """The in-order search (``_in_order``) answers most of these, each after the last plan changed the pool."""
    from capstan_scheduler.domain.core import preemption

    calls = 0
    real = preemption._in_order

    def counted(*a: object) -> object:
        nonlocal calls
        calls += 1
        return real(*a)  # type: ignore[arg-type]

    preemption._in_order = counted  # type: ignore[assignment]
    try:
        for seed in range(3):
            _evolve(_halves(40, 120, seed), set())
        _evolve(_halves(40, 120, 3), {"n0003", "n0010"})
    finally:
        preemption._in_order = real
    assert calls > 100


def test_the_first_gain_heaps_follow_every_change_of_the_pool() -> None:
    """The invariant the in-order search rests on: after any change of the pool (work leaving or arriving),
    every node that can gain has a current entry in the heap, and no entry's position is later than the node's
    real first gain (earlier is allowed: the search puts it right when it meets it)."""
    from capstan_scheduler.domain.core.preemption import _Shape

    snap = _halves(30, 12, 5)
    base = FreeState.build(snap.nodes, snap.running)
    index = VictimIndex(snap.running)
    excluded: set[str] = set()
    rng = random.Random(1)
    shapes = [_Shape(it, ()) for it in snap.pending]
    for step in range(60):
        for shape in shapes:
            heap = index.first_gains(shape, base, excluded)
            current: dict[str, int] = {}
            for first, node_id, stamp in heap:
                if stamp == index.stamp(node_id):
                    current[node_id] = min(first, current.get(node_id, first))
            for n in base.in_group("rg"):
                real = shape.first_gain(index, n, excluded)
                if real is not None:
                    assert n.id in current and current[n.id] <= real, (step, n.id)
        r = rng.choice(snap.running)
        if r.item.id in excluded:
            continue
        if step % 3:
            excluded.add(r.item.id)
            base.release(r)  # a victim leaves: its node gains
        else:
            base.apply(r.item.request, r.assignment, +1)  # freed and taken again: logged, nothing gained
            base.apply(r.item.request, r.assignment, -1)
