"""Speed check (printed with -s, not asserted): one cycle over 1,000 nodes x 8 cards and 10,000 pending."""

from __future__ import annotations

import time

from capstan_scheduler.domain.core import Card, Item, Node, Request, Snapshot, schedule

SIZES = (1, 3, 5, 10, 10, 10, 20, 40, 80, 0)


def _workload(n_nodes: int, n_pending: int) -> Snapshot:
    nodes = tuple(Node(f"n{i:05d}", "rg", 128, 1024, tuple(Card(j, "A100") for j in range(8)),
                       frozenset({"A100"}) if i % 2 else frozenset()) for i in range(n_nodes))
    pending = []
    for i in range(n_pending):
        tenths = SIZES[(i * 7919) % len(SIZES)]
        req = Request(2, 8, "A100" if tenths else "", tenths)
        pending.append(Item(f"w{i:06d}", "service" if i % 5 == 0 else "training", "rg", (i * 31) % 10, i, req,
                            2 if i % 13 == 0 and tenths >= 10 else 1))
    return Snapshot(nodes, (), tuple(pending))


def test_decisions_per_second() -> None:
    snap = _workload(1000, 10_000)
    for mode in (0, 2):
        start = time.perf_counter()
        d = schedule(snap, mode, False, now=0)
        took = time.perf_counter() - start
        print(f"\nmode {mode}: 1000 nodes x 8 cards, 10000 pending: placed {len(d.placements)}, "
              f"queued {len(d.queued)} in {took:.2f}s = {10_000 / took:,.0f} decisions/s")
        assert len(d.placements) + len(d.queued) == 10_000


def test_preemption_speed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Full pool of 1,000 nodes, 4,000 low-priority training tasks; 200 higher-priority items must preempt."""
    from capstan_scheduler.domain import core
    from capstan_scheduler.domain.core import cycle
    from capstan_scheduler.sim import full_pool

    snap = full_pool.build(core, 1000, 200)
    assert len(snap.running) == 4000
    per_item: list[float] = []
    admit = cycle._Cycle.admit

    def timed(self, it):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        admit(self, it)
        per_item.append(time.perf_counter() - t0)

    monkeypatch.setattr(cycle._Cycle, "admit", timed)
    start = time.perf_counter()
    d = schedule(snap, 2, True, now=0)
    took = time.perf_counter() - start
    per_item.sort()
    p99 = per_item[min(len(per_item) - 1, int(len(per_item) * 0.99))]
    print(f"\npreemption: 1000 nodes full, 4000 running, 200 pending: {len(d.preemptions)} victims for "
          f"{sum(1 for q in d.queued.values() if q.reason.startswith('waiting for'))} preemptors in {took:.2f}s = "
          f"{200 / took:,.0f} decisions/s, p99 {p99 * 1000:.1f} ms/item")
    assert not d.placements and len(d.queued) == 200
