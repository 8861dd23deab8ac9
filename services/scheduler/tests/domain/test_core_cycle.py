"""Queue modes, lanes per card type, priorities from policy, and the explanations."""

from __future__ import annotations

from capstan_scheduler.domain.core import Snapshot, preemption_on, priority_for, queue_mode, schedule
from capstan_scheduler.domain.core.builders import item, node, running
from capstan_scheduler.domain.policy import validate_policy


def _run(nodes, pending, mode, run=(), preempt=False):  # type: ignore[no-untyped-def]
    return schedule(Snapshot(tuple(nodes), tuple(run), tuple(pending)), mode, preempt, now=0)


PENDING = [item("big", 80, prio=5, seq=1), item("small", 10, prio=5, seq=2), item("low", 10, prio=6, seq=3)]


def test_strict_fifo_head_blocks_its_lane():
    d = _run([node("n1", 4)], PENDING, 0)
    assert not d.placements
    assert d.queued["small"].reason == "blocked by strict FIFO behind big"
    assert [d.queued[i].position for i in ("big", "small", "low")] == [1, 2, 3]


def test_backfill_within_priority():
    d = _run([node("n1", 4)], PENDING, 1)
    assert list(d.placements) == ["small"]
    assert d.queued["low"].reason.startswith("blocked behind higher-priority big (P5)")


def test_backfill_across_lane():
    d = _run([node("n1", 4)], PENDING, 2)
    assert list(d.placements) == ["small", "low"]


def test_card_types_never_block_each_other():
    nodes = [node("n1", 4, "A100"), node("n2", 4, "T4")]
    pend = [item("a-big", 80, "A100", seq=1), item("t-small", 10, "T4", seq=2), item("cpu", 0, seq=3)]
    d = _run(nodes, pend, 0)
    assert sorted(d.placements) == ["cpu", "t-small"]


def test_priority_order_within_lane():
    d = _run([node("n1", 1)], [item("late-p0", 10, prio=0, seq=9), item("early-p3", 10, prio=3, seq=1)], 0)
    assert list(d.placements) == ["late-p0"]


def test_explain_largest_free_block_and_priority_words():
    nodes = [node("n-1", 8), node("n-3", 4)]
    run = [running(item("r", 80, prio=2), "n-1", tuple(range(8))), running(item("r2", 20, prio=2), "n-3", (0, 1))]
    d = _run(nodes, [item("p", 40, prio=5)], 0, run, preempt=True)
    assert d.queued["p"].reason == "needs 4 x A100 on one node; largest free block is 2 (node n-3); " \
                                   "priority P5 below running P2 work"


def test_explain_never_fits_and_fraction():
    d = _run([node("n1", 4, shareable=True)], [item("huge", 80), item("f", 5, seq=2)],
             2, [running(item("r", 7), "n1", (0, 1, 2, 3), tenths=7)])
    assert d.queued["huge"].reason.startswith("needs 8 x A100 on one node; no node in the group has that many")
    assert d.queued["f"].reason.startswith("needs 0.5 of a shareable A100 card; most free on one card is 0.3 (node n1)")


def test_lane_summary_whole_machine_and_fragments():
    nodes = [node("n1", 8, shareable=True), node("n2", 8)]
    run = [running(item("r", 3), "n1", (0,), tenths=3), running(item("w", 10), "n1", (1,))]
    d = _run(nodes, [], 0, run)
    (lane,) = d.lanes
    assert (lane.total_cards, lane.whole_machine_free_cards, lane.fragment_free_tenths) == (16, 8, 67)
    assert lane.fragment_free_cards == 6.7


def test_priority_from_policy_first_matching_rule():
    policy = validate_policy({"ResourceRule": {"DefaultPriority": 4, "DefaultQueue": 1, "Preempted": 1},
                              "TaskRules": [
                                  {"AttrRules": [{"ValueType": "Tag", "Key": "team", "Value": "speech"}],
                                   "ScheduleRule": {"Priority": 1}},
                                  {"AttrRules": [{"ValueType": "Tag", "Key": "team", "Value": "speech"},
                                                 {"ValueType": "Tag", "Key": "x", "Value": "y"}],
                                   "ScheduleRule": {"Priority": 7}}]})
    assert priority_for(policy, {"team": "speech", "x": "y"}) == 1
    assert priority_for(policy, [("team", "vision")]) == 4
    assert queue_mode(policy) == 1 and preemption_on(policy)


def test_abnormal_nodes_keep_work_but_take_none():
    d = _run([node("n1", 8, state="Abnormal")], [item("p", 10)], 2)
    assert not d.placements


def test_explain_says_services_are_never_preempted():
    run = [running(item("svc", 80, prio=7, kind="service"), "n1", tuple(range(8)))]
    d = _run([node("n1", 8)], [item("p", 40, prio=1)], 0, run, preempt=True)
    assert d.preemptions == ()
    assert d.queued["p"].reason == "needs 4 x A100 on one node; no free A100 card; " \
                                   "the lower-priority work here is services, which are never preempted"


def test_a_cycle_without_reasons_decides_the_same() -> None:
    """The service's cycle appends placements and preemptions only and skips the reasons
    (``explained=False``): the decisions are those of the explained cycle."""
    from capstan_scheduler.domain import core
    from capstan_scheduler.sim import full_pool

    snap = full_pool.build(core, 60, 150)
    for mode in (0, 1, 2):
        full = schedule(snap, mode, True, now=0)
        bare = schedule(snap, mode, True, now=0, explained=False)
        assert full.preemptions and (full.placements, full.preemptions) == (bare.placements, bare.preemptions)
        assert full.queued and not bare.queued and not bare.lanes
