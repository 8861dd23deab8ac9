"""Table-driven preemption: the exact victim set, services first, strictly lower priority only."""

from __future__ import annotations

import pytest

from capstan_scheduler.domain.core import Preemption, Snapshot, schedule
from capstan_scheduler.domain.core.builders import item, node, running

# running work on one 8-card node "n1": (id, kind, priority, cards, started)
Run = tuple[str, str, int, tuple[int, ...], int]


def _victims(runs: list[Run], pending, nodes=None):  # type: ignore[no-untyped-def]
    nodes = nodes or [node("n1")]
    run = tuple(running(item(i, 10 * len(c), prio=p, kind=k), "n1", c, started=s) for i, k, p, c, s in runs)
    d = schedule(Snapshot(tuple(nodes), run, tuple(pending)), 0, True, now=100)
    assert not d.placements
    return sorted(p.victim_id for p in d.preemptions), d


CASES: list[tuple[str, list[Run], object, list[str]]] = [
    ("youngest of equal priority goes first",
     [("old", "training", 5, (0, 1, 2, 3), 1), ("young", "training", 5, (4, 5, 6, 7), 2)],
     item("p", 40, prio=1), ["young"]),
    ("lowest priority before youngest",
     [("low", "training", 7, (0, 1, 2, 3), 1), ("mid", "training", 5, (4, 5, 6, 7), 2)],
     item("p", 40, prio=1), ["low"]),
    ("as few as possible: one big victim instead of two small",
     [("a", "training", 5, (0, 1), 3), ("b", "training", 5, (2, 3), 4), ("big", "training", 5, (4, 5, 6, 7), 1)],
     item("p", 40, prio=1), ["big"]),
    ("two victims when one is not enough",
     [("a", "training", 5, (0, 1, 2, 3), 1), ("b", "training", 5, (4, 5, 6, 7), 2)],
     item("p", 80, prio=1), ["a", "b"]),
    ("equal priority is never a victim",
     [("same", "training", 3, (0, 1, 2, 3, 4, 5, 6, 7), 1)], item("p", 40, prio=3), []),
    ("higher priority is never a victim",
     [("hi", "training", 0, (0, 1, 2, 3, 4, 5, 6, 7), 1)], item("p", 40, prio=3), []),
    ("a task never preempts a service",
     [("svc", "service", 9, (0, 1, 2, 3, 4, 5, 6, 7), 1)], item("p", 40, prio=0), []),
    ("a service never preempts a service",
     [("svc", "service", 9, (0, 1, 2, 3, 4, 5, 6, 7), 1)], item("p", 40, prio=0, kind="service"), []),
    ("a service preempts lower-priority training",
     [("t", "training", 6, (0, 1, 2, 3, 4, 5, 6, 7), 1)], item("p", 10, prio=2, kind="service"), ["t"]),
    ("no victims when evicting all would still not fit",
     [("t", "training", 9, (0, 1, 2, 3), 1), ("svc", "service", 9, (4, 5, 6, 7), 2)],
     item("p", 80, prio=0), []),
    ("mixed: only the training part of the lower work",
     [("svc", "service", 9, (0, 1, 2, 3), 1), ("t1", "training", 8, (4, 5), 2), ("t2", "training", 8, (6, 7), 3)],
     item("p", 40, prio=0), ["t1", "t2"]),
]


@pytest.mark.parametrize(("name", "runs", "pending", "expected"), CASES, ids=[c[0] for c in CASES])
def test_exact_victims(name, runs, pending, expected):  # type: ignore[no-untyped-def]
    got, d = _victims(runs, [pending])
    assert got == expected, name
    assert all(p.preemptor_id == "p" for p in d.preemptions)


def test_gang_preemption_frees_enough_on_every_node():
    nodes = [node("n1", 4), node("n2", 4)]
    run = (running(item("a", 40, prio=7), "n1", (0, 1, 2, 3), started=5),
           running(item("b", 40, prio=7), "n2", (0, 1, 2, 3), started=6),
           running(item("c", 0, prio=7), "n2", (), started=7))
    d = schedule(Snapshot(tuple(nodes), run, (item("p", 40, prio=0, count=2),)), 0, True, now=0)
    assert sorted(p.victim_id for p in d.preemptions) == ["a", "b"]  # "c" (CPU only) would not help


def test_preemptor_waits_and_does_not_preempt_again_while_victims_leave():
    nodes = [node("n1", 4)]
    victim = running(item("v", 40, prio=7), "n1", (0, 1, 2, 3), started=5)
    p = item("p", 40, prio=0)
    d1 = schedule(Snapshot(tuple(nodes), (victim,), (p,)), 0, True, now=0)
    assert d1.preemptions == (Preemption("v", "p"),)
    assert d1.queued["p"].reason == "waiting for 1 preempted task(s) to leave: v"
    evicting = running(item("v", 40, prio=7), "n1", (0, 1, 2, 3), started=5, evicting=True)
    d2 = schedule(Snapshot(tuple(nodes), (evicting,), (p,)), 0, True, now=1)
    assert d2.preemptions == () and d2.queued["p"].reason == "waiting for evicted work to leave"
    d3 = schedule(Snapshot(tuple(nodes), (), (p,)), 0, True, now=2)
    assert list(d3.placements) == ["p"]


def test_two_preemptors_never_share_a_victim():
    nodes = [node("n1", 4)]
    run = (running(item("v", 40, prio=7), "n1", (0, 1, 2, 3), started=5),)
    pend = (item("p1", 40, prio=0, seq=1), item("p2", 40, prio=0, seq=2))
    d = schedule(Snapshot(tuple(nodes), run, pend), 2, True, now=0)
    assert d.preemptions == (Preemption("v", "p1"),)
    assert "p2" in d.queued and "p1" in d.queued


def test_preemption_off_means_no_victims():
    run = (running(item("v", 80, prio=9), "n1", tuple(range(8))),)
    d = schedule(Snapshot((node("n1"),), run, (item("p", 10, prio=0),)), 0, False, now=0)
    assert d.preemptions == () and d.queued["p"].reason.endswith("; preemption is off")
