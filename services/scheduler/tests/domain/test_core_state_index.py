"""The FreeState's index (nodes by whole free cards and by roomiest card) stays true through every take and
give-back, and placement through the index picks exactly what a walk over every node picks."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from capstan_scheduler.domain.core import Snapshot
from capstan_scheduler.domain.core.placement import place_gang
from capstan_scheduler.domain.core.state import FreeState


def _sibling(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_capstan_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_props = _sibling("test_core_properties")


def _buckets(index: dict[tuple[str, str], dict[int, list[str]]]) -> dict[tuple[str, str, int], tuple[str, ...]]:
    return {(rg, t, w): tuple(ids) for (rg, t), b in index.items() for w, ids in b.items() if ids}


def _fresh(state: FreeState) -> FreeState:
    return FreeState({k: n.copy() for k, n in state.nodes.items()})  # its index is built from scratch


@settings(max_examples=150, deadline=None)
@given(snap=_props.snapshots(), data=st.data())
def test_index_follows_every_change_and_placement_through_it_is_the_same(snap: Snapshot, data: st.DataObject) -> None:
    state = FreeState.build(snap.nodes, snap.running)
    plain = _fresh(state)
    for item in snap.pending:
        for rg in {n.resource_group for n in snap.nodes}:
            via_index = place_gang(state.in_group(rg), item.request, item.instance_count)
            walked = place_gang(list(plain.in_group(rg)), item.request, item.instance_count)
            assert via_index == walked
        assert _buckets(state.whole_index) == _buckets(_fresh(state).whole_index)
        assert _buckets(state.room_index) == _buckets(_fresh(state).room_index)
    for r in data.draw(st.lists(st.sampled_from(snap.running), unique_by=lambda r: r.item.id)) if snap.running else []:
        state.release(r)  # give back: the index (and the CPU heap) must follow
        plain.release(r)
        assert _buckets(state.whole_index) == _buckets(_fresh(state).whole_index)
        assert _buckets(state.room_index) == _buckets(_fresh(state).room_index)
        for item in snap.pending[:3]:
            for rg in {n.resource_group for n in snap.nodes}:
                assert place_gang(state.in_group(rg), item.request, item.instance_count) == \
                    place_gang(list(plain.in_group(rg)), item.request, item.instance_count)


def test_a_fresh_card_goes_to_the_fullest_node_even_past_a_partly_used_one() -> None:
    from capstan_scheduler.domain.core.builders import item, node, running

    nodes = [node("a", 4, shareable=True), node("b", 4, shareable=True)]
    run = [running(item("x", 8), "a", (0,), tenths=8),       # a: one card with 0.2 free, three fresh (3.2 free)
           running(item("y", 20), "b", (0, 1))]               # b: two cards taken, two fresh (2.0 free)
    state = FreeState.build(nodes, run)
    plain = _fresh(state)
    half = item("half", 5).request
    via_index = place_gang(state.in_group("rg"), half, 1)
    walked = place_gang(list(plain.in_group("rg")), half, 1)
    assert via_index == walked and via_index is not None and via_index[0].node_id == "b"


def test_cpu_only_work_skips_nodes_whose_cpu_is_free_but_memory_is_not() -> None:
    """Nodes with the most free CPU but too little memory (CPU-only work beside memory-bound tasks) are
    never what a CPU-only request gets; through the per-memory-size heaps (more sizes than the heaps kept
    too) placement picks what the walk picks, placement after placement."""
    import random

    from capstan_scheduler.domain.core import InstanceAssignment, Item, Node, Request, Running
    from capstan_scheduler.domain.core.state import MEM_HEAPS

    rng = random.Random(4)
    nodes = tuple(Node(f"n{i:03d}", "rg", 64, 512) for i in range(120))
    running = tuple(Running(Item(f"r{i:03d}", "training", "rg", 5, i, Request(rng.choice((0, 8, 16)), rng.choice((500, 480, 256, 0)))),
                            (InstanceAssignment(n.id, ()),), 0) for i, n in enumerate(nodes))
    state = FreeState.build(nodes, running)
    plain = _fresh(state)
    sizes = [8, 16, 32, 64, 1, 2, 4, 12, 24, 48, 96][: MEM_HEAPS + 3]
    for step in range(300):
        req = Request(rng.choice((1, 2, 4, 8)), rng.choice(sizes))
        count = rng.choice((1, 1, 2))
        via_index = place_gang(state.in_group("rg"), req, count)
        assert via_index == place_gang(list(plain.in_group("rg")), req, count), step
        if via_index is not None and step % 3 == 0:  # some work leaves again
            state.apply(req, via_index, +1)
            plain.apply(req, via_index, +1)
