"""Place one gang all-or-nothing on a FreeState (SPEC §7.2, §7.3).

- Whole cards: each instance takes whole free cards of its type on one node. The gang goes on as few
  nodes as possible: a node that can host every remaining instance, with the fewest whole cards left
  over (exact fit first), else the node that hosts the most of them. Lowest free card indices first.
- Fractions (1..9 tenths): from ONE card of a type the node marks shareable; best fit by card (the
  partly used card with the least room that still fits), then the node with the least free of that type.
- CPU-only: spread; the node with the most free CPU (then memory) first.
Ties break on node id, so the result never depends on iteration order (nor on visiting only the nodes a
``Group``'s index says can hold the request). Never overcommits: every take is
checked first, and a gang that cannot be completed is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

from .model import TENTHS_PER_CARD, InstanceAssignment, Request, cpu_milli, mem_mib
from .state import FreeNode, Group

Assignment = tuple[InstanceAssignment, ...]
_NONE: frozenset[str] = frozenset()


def _copies(n: FreeNode, cpu: int, mem: int, card_type: str, k: int, limit: int) -> int:
    """How many instances (each: cpu, mem, k whole cards) node ``n`` can still take, up to ``limit``."""
    c = n.whole.get(card_type, 0) // k
    if cpu:
        c = min(c, n.cpu // cpu)
    if mem:
        c = min(c, n.mem // mem)
    return max(0, min(c, limit))


def _place_whole(nodes: Sequence[FreeNode], req: Request, count: int, skip: Container[str]) -> Assignment | None:
    cpu, mem, t, k = cpu_milli(req.cpu), mem_mib(req.memory_gib), req.gpu_type, req.whole_cards
    out: list[InstanceAssignment] = []
    taken: list[tuple[FreeNode, tuple[tuple[int, int], ...]]] = []
    if count == 1 and isinstance(nodes, Group):
        # one instance: the best key below is (fewest whole cards left, node id), which the index's
        # buckets (by whole free cards, ids sorted) give in order
        # the index's buckets hold only nodes with k whole cards free: one copy fits where CPU and memory do
        one = nodes.first_whole(t, k, lambda n: (not cpu or n.cpu >= cpu) and (not mem or n.mem >= mem)
                                and n.schedulable and n.id not in skip)
        if one is None:
            return None
        free, index = one.free[t], one.index[t]
        cards = tuple((index[p], TENTHS_PER_CARD) for p in range(len(free)) if free[p] == TENTHS_PER_CARD)[:k]
        one.apply(cpu, mem, cards, -1)
        return (InstanceAssignment(one.id, cards),)
    remaining = count
    while remaining:
        best: FreeNode | None = None
        best_key: tuple[int, int, int, str] | None = None
        if isinstance(nodes, Group):
            best = _best_whole_indexed(nodes, cpu, mem, t, k, remaining, skip)
            best_key = (0, 0, 0, "")  # decided: the walk below is skipped
        for n in () if best_key is not None else nodes:
            if not n.schedulable or n.id in skip or n.whole.get(t, 0) < k:
                continue
            c = _copies(n, cpu, mem, t, k, remaining)
            if not c:
                continue
            # hosts all remaining -> rank 0; otherwise prefer more copies; then least whole cards left over
            left = n.whole[t] - c * k
            key = (0, left, 0, n.id) if c == remaining else (1, -c, left, n.id)
            if best_key is None or key < best_key:
                best, best_key = n, key
        if best is None:
            for n, cards in taken:
                n.apply(cpu, mem, cards, +1)
            return None
        c = _copies(best, cpu, mem, t, k, remaining)
        for _ in range(c):
            free, index = best.free[t], best.index[t]
            cards = tuple((index[p], TENTHS_PER_CARD) for p in range(len(free)) if free[p] == TENTHS_PER_CARD)[:k]
            best.apply(cpu, mem, cards, -1)
            taken.append((best, cards))
            out.append(InstanceAssignment(best.id, cards))
        remaining -= c
    return tuple(out)


def _best_whole_indexed(
    group: Group, cpu: int, mem: int, t: str, k: int, remaining: int, skip: Container[str]
) -> FreeNode | None:
    """The node the walk in ``_place_whole`` would pick, from the index instead of every node: its key
    is (hosts every remaining instance first, then most copies; fewest whole cards left; node id). For c
    copies the best node is the first, in (whole free cards, id) order from c x k cards up, that takes c
    copies; c goes down from ``remaining``, so when c is tried no node takes more than c."""
    for c in range(remaining, 0, -1):
        def takes(n: FreeNode, c: int = c) -> bool:
            return ((not cpu or n.cpu >= c * cpu) and (not mem or n.mem >= c * mem) and n.schedulable
                    and n.id not in skip and _copies(n, cpu, mem, t, k, remaining) >= c)

        found = group.first_whole(t, c * k, takes)
        if found is not None:
            return found
    return None


def _fresh_card_taker(
    partial: Container[str], t: str, skip: Container[str], cpu: int, mem: int
) -> Callable[[FreeNode], bool]:
    """Accepts a node without partly used cards of ``t`` that may take a fraction of a fresh card."""
    def ok(n: FreeNode) -> bool:
        return (n.id not in partial and n.schedulable and t in n.shareable and n.id not in skip
                and n.fits_cpu_mem(cpu, mem))
    return ok


def _place_fraction(nodes: Sequence[FreeNode], req: Request, count: int, skip: Container[str]) -> Assignment | None:
    cpu, mem, t, need = cpu_milli(req.cpu), mem_mib(req.memory_gib), req.gpu_type, req.gpu_tenths
    out: list[InstanceAssignment] = []
    taken: list[tuple[FreeNode, tuple[tuple[int, int], ...]]] = []
    for _ in range(count):
        best: tuple[int, int, str, int] | None = None
        best_node: FreeNode | None = None
        # Through a Group's index: a card with less than a whole card free sits on a node of the partial
        # set, so those nodes are the only ones whose best room can be below 10; when none fits there,
        # the best fresh card is on the node with the least free of the type (10 x whole free cards for a
        # node without partial cards: the whole buckets in order give it), or on a partial node.
        group = nodes if isinstance(nodes, Group) else None
        for n in group.partial(t) if group is not None else nodes:
            if not n.schedulable or t not in n.shareable or n.id in skip or not n.fits_cpu_mem(cpu, mem):
                continue
            free = n.free.get(t)
            if not free:
                continue
            room = min((f for f in free if f >= need), default=-1)
            if room < 0:
                continue
            pos = free.index(room)
            key = (room - need, sum(free), n.id, pos)
            if best is None or key < best:
                best, best_node = key, n
        if group is not None and (best is None or best[0] + need == TENTHS_PER_CARD):
            fresh = group.first_whole(t, 1, _fresh_card_taker(group.partial_ids(t), t, skip, cpu, mem))
            if fresh is not None:
                free = fresh.free[t]
                key = (TENTHS_PER_CARD - need, sum(free), fresh.id, free.index(TENTHS_PER_CARD))
                if best is None or key < best:
                    best, best_node = key, fresh
        if best is None or best_node is None:
            for n, cards in taken:
                n.apply(cpu, mem, cards, +1)
            return None
        cards = ((best_node.index[t][best[3]], need),)
        best_node.apply(cpu, mem, cards, -1)
        taken.append((best_node, cards))
        out.append(InstanceAssignment(best_node.id, cards))
    return tuple(out)


def _place_cpu(nodes: Sequence[FreeNode], req: Request, count: int, skip: Container[str]) -> Assignment | None:
    cpu, mem = cpu_milli(req.cpu), mem_mib(req.memory_gib)
    out: list[InstanceAssignment] = []
    taken: list[FreeNode] = []
    for _ in range(count):
        best: FreeNode | None = None
        decided = False
        if isinstance(nodes, Group):
            best, decided = nodes.most_cpu(cpu, lambda n: n.schedulable and n.id not in skip and n.fits_cpu_mem(cpu, mem),
                                           max(mem, 0))
        if not decided:
            for n in nodes:
                if not n.schedulable or n.id in skip or not n.fits_cpu_mem(cpu, mem):
                    continue
                if best is None or (-n.cpu, -n.mem, n.id) < (-best.cpu, -best.mem, best.id):
                    best = n
        if best is None:
            for n in taken:
                n.apply(cpu, mem, (), +1)
            return None
        best.apply(cpu, mem, (), -1)
        taken.append(best)
        out.append(InstanceAssignment(best.id, ()))
    return tuple(out)


def place_gang(
    nodes: Sequence[FreeNode], request: Request, count: int, skip: Container[str] = _NONE
) -> Assignment | None:
    """Place ``count`` instances of ``request`` on ``nodes`` (taking from them), or None and leave them unchanged."""
    if request.gpu_tenths == 0:
        return _place_cpu(nodes, request, count, skip)
    if request.fractional:
        return _place_fraction(nodes, request, count, skip)
    return _place_whole(nodes, request, count, skip)
