"""Property-based: random pools and workloads; invariants of one cycle (and the same input twice)."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capstan_scheduler.domain.core import Card, Decisions, Item, Node, Request, Snapshot, schedule
from capstan_scheduler.domain.core.model import TENTHS_PER_CARD, InstanceAssignment, Running, cpu_milli, mem_mib
from capstan_scheduler.domain.core.placement import place_gang
from capstan_scheduler.domain.core.state import FreeState

TYPES = ("A100", "T4")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pools(draw: st.DrawFn) -> tuple[Node, ...]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        t = draw(st.sampled_from(TYPES))
        n = draw(st.integers(0, 8))
        t2 = draw(st.sampled_from(TYPES))
        n2 = draw(st.integers(0, 2))
        cards = tuple(Card(j, t if j < n else t2) for j in range(n + n2))
        share = frozenset(x for x in TYPES if draw(st.booleans()))
        state = draw(st.sampled_from(("Running", "Running", "Running", "Abnormal")))
        out.append(Node(f"n{i}", "rg", draw(st.sampled_from((4, 16, 64))), draw(st.sampled_from((8, 64, 512))),
                        cards, share, state))
    return tuple(out)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    tenths = draw(st.sampled_from((0, 0, 1, 3, 5, 10, 10, 20, 40, 80)))
    return Request(draw(st.sampled_from((0.5, 1, 4, 8))), draw(st.sampled_from((1, 4, 32))),
                   draw(st.sampled_from(TYPES)) if tenths else "", tenths)


@st.composite
def items(draw: st.DrawFn, prefix: str, n: int) -> list[Item]:
    return [Item(f"{prefix}{i}", draw(st.sampled_from(("training", "service"))), "rg", draw(st.integers(0, 9)),
                 draw(st.integers(0, 50)), draw(requests()), draw(st.sampled_from((1, 1, 1, 2, 3))))
            for i in range(n)]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    nodes = draw(pools())
    state = FreeState.build(nodes, ())
    running = []
    for k, it in enumerate(draw(items("r", draw(st.integers(0, 10))))):
        fit = place_gang(state.in_group("rg"), it.request, it.instance_count)  # a valid running set
        if fit is not None:
            running.append(Running(it, fit, started_at=draw(st.integers(0, 100)), evicting=k % 7 == 6))
    return Snapshot(nodes, tuple(running), tuple(draw(items("p", draw(st.integers(0, 14))))))


def _usage(snap: Snapshot, d: Decisions) -> None:
    """Running (victims included: they still hold resources) + placements fit every node's capacity."""
    cpu: dict[str, int] = defaultdict(int)
    mem: dict[str, int] = defaultdict(int)
    card: dict[tuple[str, int], int] = defaultdict(int)
    by_id = {i.id: i for i in snap.pending}
    held = [(r.item.request, r.assignment) for r in snap.running]
    held += [(by_id[i].request, a) for i, a in d.placements.items()]
    for req, assignment in held:
        for inst in assignment:
            cpu[inst.node_id] += cpu_milli(req.cpu)
            mem[inst.node_id] += mem_mib(req.memory_gib)
            assert sum(t for _, t in inst.cards) == req.gpu_tenths
            if req.fractional:
                assert len(inst.cards) == 1
            for idx, t in inst.cards:
                card[(inst.node_id, idx)] += t
    for n in snap.nodes:
        assert cpu[n.id] <= cpu_milli(n.cpu) and mem[n.id] <= mem_mib(n.memory_gib)
        for c in n.cards:
            assert card[(n.id, c.index)] <= TENTHS_PER_CARD
    nodes = {n.id: n for n in snap.nodes}
    for i, a in d.placements.items():
        req = by_id[i].request
        for inst in a:
            node = nodes[inst.node_id]
            assert node.schedulable
            types = {c.index: c.type for c in node.cards}
            assert all(types[idx] == req.gpu_type for idx, _ in inst.cards)
            if req.fractional:
                assert req.gpu_type in node.shareable


def _check(snap: Snapshot, mode: int, preempt: bool) -> Decisions:
    d = schedule(snap, mode, preempt, now=7)
    assert d == schedule(snap, mode, preempt, now=7)  # deterministic
    by_id = {i.id: i for i in snap.pending}
    # every pending item is decided exactly once; gangs all-or-nothing
    assert set(d.placements) | set(d.queued) == set(by_id) and not set(d.placements) & set(d.queued)
    for i, a in d.placements.items():
        assert len(a) == by_id[i].instance_count
    _usage(snap, d)
    running = {r.item.id: r for r in snap.running}
    seen = set()
    for p in d.preemptions:
        v, pre = running[p.victim_id], by_id[p.preemptor_id]
        assert preempt and v.item.kind == "training" and not v.evicting
        assert v.item.priority > pre.priority
        assert p.preemptor_id in d.queued and p.victim_id not in seen
        seen.add(p.victim_id)
    if mode == 0:  # strict FIFO: nothing starts behind a still-queued earlier item of its lane
        for i in d.placements:
            for q in d.queued:
                if by_id[q].lane == by_id[i].lane:
                    assert by_id[q].order_key > by_id[i].order_key
    if mode == 1:
        for i in d.placements:
            for q in d.queued:
                if by_id[q].lane == by_id[i].lane and by_id[q].order_key < by_id[i].order_key:
                    assert by_id[q].priority == by_id[i].priority
    return d


@SETTINGS
@given(snapshots(), st.sampled_from((0, 1, 2)), st.booleans())
def test_cycle_invariants(snap: Snapshot, mode: int, preempt: bool) -> None:
    _check(snap, mode, preempt)


@SETTINGS
@given(snapshots())
def test_order_of_input_does_not_matter(snap: Snapshot) -> None:
    flipped = Snapshot(tuple(reversed(snap.nodes)), tuple(reversed(snap.running)), tuple(reversed(snap.pending)))
    a, b = schedule(snap, 2, True, now=1), schedule(flipped, 2, True, now=1)
    assert dict(a.placements) == dict(b.placements) and a.preemptions == b.preemptions
    assert dict(a.queued) == dict(b.queued)


@SETTINGS
@given(snapshots())
def test_placements_are_valid_assignments(snap: Snapshot) -> None:
    d = schedule(snap, 2, False, now=0)
    for a in d.placements.values():
        assert all(isinstance(x, InstanceAssignment) for x in a)
    assert not d.preemptions
