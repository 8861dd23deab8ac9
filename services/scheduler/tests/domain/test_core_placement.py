"""Table-driven placement choices: packing, spreading, fractional sharing, gangs, no overcommit."""

from __future__ import annotations

import pytest

from capstan_scheduler.domain.core import FreeState, InstanceAssignment, Request, place_gang
from capstan_scheduler.domain.core.builders import item, node, running


def _place(nodes, req, count=1, run=()):  # type: ignore[no-untyped-def]
    state = FreeState.build(nodes, run)
    return place_gang(state.in_group("rg"), req, count)


A = "A100"


@pytest.mark.parametrize(
    ("name", "nodes", "busy", "req", "count", "expected"),
    [
        ("whole: best fit prefers the fuller node", [node("n1"), node("n2")], [("n2", (0, 1, 2, 3))],
         Request(1, 1, A, 40), 1, [("n2", (4, 5, 6, 7))]),
        ("whole: exact fit beats a bigger block", [node("n1", 8), node("n2", 2)], [],
         Request(1, 1, A, 20), 1, [("n2", (0, 1))]),
        ("gang: both instances on one node when one can host all", [node("n1", 8), node("n2", 4)], [],
         Request(1, 1, A, 40), 2, [("n1", (0, 1, 2, 3)), ("n1", (4, 5, 6, 7))]),
        ("gang: across nodes when no single node fits", [node("n1", 4), node("n2", 4), node("n3", 8)],
         [("n3", (0, 1, 2, 3, 4, 5))], Request(1, 1, A, 40), 2, [("n1", (0, 1, 2, 3)), ("n2", (0, 1, 2, 3))]),
        ("whole: skips partly used cards", [node("n1", 2)], [("n1", (0,), 3)],
         Request(1, 1, A, 10), 1, [("n1", (1,))]),
    ],
)
def test_whole_card_packing(name, nodes, busy, req, count, expected):  # type: ignore[no-untyped-def]
    run = []
    for i, b in enumerate(busy):
        nid, cards = b[0], b[1]
        tenths = b[2] if len(b) > 2 else 10
        run.append(running(item(f"r{i}", 10), nid, cards, tenths=tenths))
    got = _place(nodes, req, count, run)
    assert got == tuple(InstanceAssignment(n, tuple((c, 10) for c in cs)) for n, cs in expected), name


def test_fraction_prefers_partly_used_card_with_least_room():
    nodes = [node("n1", 2, shareable=True), node("n2", 2, shareable=True)]
    run = [running(item("a", 5), "n1", (0,), tenths=5), running(item("b", 7), "n2", (1,), tenths=7)]
    # n1 card0 has 5 free, n2 card1 has 3 free: a 0.3 request fits n2 card1 exactly
    assert _place(nodes, Request(1, 1, A, 3), 1, run) == (InstanceAssignment("n2", ((1, 3),)),)
    # a 0.4 request only fits n1 card0 (5 free) among partly used cards
    assert _place(nodes, Request(1, 1, A, 4), 1, run) == (InstanceAssignment("n1", ((0, 4),)),)


def test_fraction_needs_a_shareable_node_and_one_card():
    assert _place([node("n1", 4)], Request(1, 1, A, 5)) is None
    nodes = [node("n1", 2, shareable=True)]
    run = [running(item("a", 6), "n1", (0,), tenths=6), running(item("b", 6), "n1", (1,), tenths=6)]
    assert _place(nodes, Request(1, 1, A, 5), 1, run) is None  # 0.4 + 0.4 free, but not on one card


def test_cpu_only_items_spread():
    nodes = [node("n1", 0, cpu=16), node("n2", 0, cpu=16), node("n3", 0, cpu=8)]
    got = _place(nodes, Request(4, 1), 3)
    assert got is not None and [a.node_id for a in got] == ["n1", "n2", "n1"]


def test_gang_is_all_or_nothing_and_rolls_back():
    nodes = [node("n1", 4), node("n2", 2)]
    state = FreeState.build(nodes, ())
    assert place_gang(state.in_group("rg"), Request(1, 1, A, 40), 2) is None
    assert [state.nodes["n1"].whole[A], state.nodes["n2"].whole[A]] == [4, 2]


def test_cpu_and_memory_limit_gpu_placement():
    nodes = [node("n1", 8, cpu=2), node("n2", 8, cpu=64)]
    got = _place(nodes, Request(4, 1, A, 10))
    assert got is not None and got[0].node_id == "n2"


def test_unschedulable_nodes_take_nothing():
    assert _place([node("n1", 8, state="Abnormal")], Request(1, 1, A, 10)) is None
