"""The heavy-preemption scenario: a pool whose every card is held by low-priority training, and a
queue of higher-priority items (some gangs, some services) that can only start by preempting.

``build(core, ...)`` takes the scheduling-core module to build with, so a benchmark can run the same
scenario on the working tree's core and on an older one side by side.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

# each node is full: tenths per running item, in card order (a 5 is half a card, shared with the next 5)
PATTERNS = ((80,), (40, 40), (40, 20, 10, 10), (20, 20, 10, 10, 10, 5, 5), (20, 20, 20, 10, 5, 5))
PENDING_SIZES = (10, 20, 40, 80, 5, 3, 20, 10, 40, 80)


def build(core: ModuleType, n_nodes: int, n_pending: int) -> Any:
    """A ``core.Snapshot``: n_nodes x 8 A100 (shareable where a pattern splits a card), each node full with
    P6..P9 training; n_pending items P0..P3, every tenth a 2..4-instance gang, every seventh a service."""
    nodes: list[Any] = []
    running: list[Any] = []
    for i in range(n_nodes):
        pattern = PATTERNS[i % len(PATTERNS)]
        shareable = any(t < 10 for t in pattern)
        nid = f"n{i:05d}"
        nodes.append(core.Node(nid, "rg", 128, 1024, tuple(core.Card(j, "A100") for j in range(8)),
                               frozenset({"A100"}) if shareable else frozenset()))
        at = 0  # tenths used so far on this node
        for k, t in enumerate(pattern):
            cards = tuple((c, 10) for c in range(at // 10, at // 10 + t // 10)) if t >= 10 else ((at // 10, t),)
            at += t
            rid = len(running)
            it = core.Item(f"r{rid:05d}", "training", "rg", 6 + (rid * 7) % 4, rid, core.Request(2, 8, "A100", t))
            running.append(core.Running(it, (core.InstanceAssignment(nid, cards),), started_at=(rid * 7919) % 10_000 + k))
    pending: list[Any] = []
    for i in range(n_pending):
        t = PENDING_SIZES[i % len(PENDING_SIZES)]
        gang = 2 + i % 3 if i % 10 == 3 else 1
        if gang > 1:
            t = 20 if i % 20 == 3 else 40
        pending.append(core.Item(f"p{i:04d}", "service" if i % 7 == 0 else "training", "rg", i % 4, i,
                                 core.Request(2, 8, "A100", t), gang))
    return core.Snapshot(tuple(nodes), tuple(running), tuple(pending))
