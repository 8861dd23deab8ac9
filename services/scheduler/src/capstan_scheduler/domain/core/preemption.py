"""Choose victims for a waiting item (SPEC §7.2, services first).

Victims are running TRAINING items of the same resource group, strictly lower priority than the
preemptor (numerically greater), not already being evicted. Services are never victims, so a task
never preempts a service and a service never preempts a service.

Order of candidates: lowest priority first, then youngest (latest started), then id. As few victims as
possible: first the first single candidate that makes the gang fit (on a simulated copy of the pool), then
the first pair (when there are at most PAIR_SEARCH_MAX candidates); else victims are added in order until
the gang fits and any the gang can do without is dropped again (last added first), so the set is at
least minimal: no victim can be spared.

How it is searched fast (same answers as trying every set on a copy of the pool): a placement succeeds
exactly when the instances each node could still take add up to the gang's size (every node's room is
independent of the others), so a set of victims is judged by re-counting only the nodes it touches. Victims
are indexed once per cycle (``VictimIndex``) by resource group in preference order and by node.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations, islice

from .model import Item, Running, cpu_milli, mem_mib
from .placement import Assignment, place_gang
from .state import FreeNode, FreeState, Group

PAIR_SEARCH_MAX = 24  # above this many candidates, pairs are not searched exhaustively
SINGLES_BOUND_AFTER = 64  # after this many single candidates, check whether any single one can be enough


@dataclass(frozen=True)
class Plan:
    victims: tuple[Running, ...]
    assignment: Assignment  # where the preemptor will go once its victims (and earlier evictions) have left


def _pref(r: Running) -> tuple[int, int, str]:
    return (-r.item.priority, -r.started_at, r.item.id)


def candidates(preemptor: Item, running: Sequence[Running], excluded: Container[str]) -> list[Running]:
    """Eligible victims in the order they are tried."""
    out = [
        r for r in running
        if r.item.kind == "training" and not r.evicting and r.item.id not in excluded
        and r.item.resource_group == preemptor.resource_group and r.item.priority > preemptor.priority
    ]
    out.sort(key=_pref)
    return out


# one instance of a victim on one node: (node id, cpu millicores, memory MiB, (card index, tenths)...)
Part = tuple[str, int, int, tuple[tuple[int, int], ...]]


class VictimIndex:
    """Running training work that may be preempted, built once per cycle: per resource group in preference
    order (lowest priority first, then youngest, then id), with each victim's share of every node it holds."""

    def __init__(self, running: Iterable[Running]) -> None:
        by_rg: dict[str, list[Running]] = {}
        self._parts: dict[int, tuple[Part, ...]] = {}
        self._cards: dict[int, tuple[tuple[str, int], ...]] = {}
        for r in running:
            if r.item.kind == "training" and not r.evicting:
                by_rg.setdefault(r.item.resource_group, []).append(r)
        for rs in by_rg.values():
            rs.sort(key=_pref)
        self.by_rg = by_rg
        # the same order, as (minus priority, id) so that the eligible prefix is found by bisection
        self.keys = {rg: [(-r.item.priority, r.item.id) for r in rs] for rg, rs in by_rg.items()}
        # the most cards each holds on one node
        self.spans = {rg: [len(r.assignment[0].cards) if len(r.assignment) == 1 else max(n for _, n in self.cards(r))
                           for r in rs] for rg, rs in by_rg.items()}
        # per victim, (its node, cards it holds there) when it holds one node only, else None
        self.one_node: dict[str, list[tuple[str, int] | None]] = {
            rg: [c[0] if len(c := self.cards(r)) == 1 else None for r in rs] for rg, rs in by_rg.items()}
        # per node, the most cards one victim holding only that node holds there (an upper bound for the
        # single-victim search), and whether any victim spans several nodes
        self.node_most: dict[str, int] = {}
        self.multi_node = {rg: any(len(r.assignment) > 1 and len({a.node_id for a in r.assignment}) > 1 for r in rs)
                           for rg, rs in by_rg.items()}
        for rs in by_rg.values():
            for r in rs:
                nodes = {a.node_id for a in r.assignment}
                if len(nodes) == 1:
                    (node_id,) = nodes
                    held = sum(len(a.cards) for a in r.assignment)
                    if held > self.node_most.get(node_id, 0):
                        self.node_most[node_id] = held
        self.most_anywhere = max(self.node_most.values(), default=0)
        self._excluded: Container[str] | None = None
        self._starts: dict[str, int] = {}
        self._on_node: dict[str, dict[str, list[int]]] = {}
        # the first-gain heaps (``first_gains``), valid for one pool and one excluded set
        self._gains_of: tuple[FreeState, Container[str]] | None = None
        self._log: list[str] = []
        self._read = 0
        self._stamp: dict[str, int] = {}
        self._heaps: dict[tuple[object, ...], tuple[_Shape, list[tuple[int, str, int]]]] = {}
        # (request, count) -> (log position, instances each node could take there, their sum) when none fit
        self._no_fit: dict[tuple[object, ...], tuple[int, int, dict[str, int]]] = {}

    def on_node(self, rg: str) -> dict[str, list[int]]:
        """Per node, the positions in ``rg``'s order of the victims holding some of it (ascending)."""
        got = self._on_node.get(rg)
        if got is None:
            got = self._on_node[rg] = {}
            for pos, r in enumerate(self.by_rg.get(rg, ())):
                for node_id in dict.fromkeys(a.node_id for a in r.assignment):
                    got.setdefault(node_id, []).append(pos)
        return got

    def first_gains(self, shape: _Shape, base: FreeState, excluded: Container[str]) -> list[tuple[int, str, int]]:
        """A heap of (position, node id, stamp): for each node of ``shape``'s group that can ever take one
        more instance of it, the first position in the group's order at which releasing the victims holding
        some of that node (not excluded) lets it. Kept across the calls of a cycle: the nodes ``base`` logs as
        changed since the last call get a new entry (and a new stamp: an entry whose stamp is not its node's is
        stale). A position may be too small (a victim excluded since, without its node changing), never too
        large: nodes only gain room through a logged change. Valid while ``excluded`` only grows."""
        if not self._track(base, excluded) and self._read < len(self._log):
            dirty = set(self._log[self._read:])
            self._read = len(self._log)
            for node_id in dirty:
                self._stamp[node_id] = stamp = self._stamp.get(node_id, 0) + 1
                n = base.nodes[node_id]
                for other, heap in self._heaps.values():
                    if n.rg == other.rg and (first := other.first_gain(self, n, excluded)) is not None:
                        heapq.heappush(heap, (first, node_id, stamp))
        key = shape.key()
        got = self._heaps.get(key)
        if got is None:
            heap = []
            for n in base.in_group(shape.rg):
                first = shape.first_gain(self, n, excluded)
                if first is not None:
                    heap.append((first, n.id, self._stamp.get(n.id, 0)))
            heapq.heapify(heap)
            got = self._heaps[key] = (shape, heap)
        return got[1]

    def _track(self, base: FreeState, excluded: Container[str]) -> bool:
        """Start following ``base``'s changes when it (or ``excluded``) is not the one followed; whether it started."""
        if self._gains_of is not None and self._gains_of[0] is base and self._gains_of[1] is excluded:
            return False
        self._gains_of = (base, excluded)
        self._log = base.watch()
        self._read = len(self._log)
        self._stamp, self._heaps, self._no_fit = {}, {}, {}
        return True

    def direct_fit(self, base: FreeState, item: Item, skip: Container[str], excluded: Container[str],
                   keep: bool = False) -> Assignment | None:
        """``_fits(base, item, (), skip)``, remembering, when nothing fits, how many instances each node could
        take (they add up to less than the gang): later, only the nodes ``base`` logged as changed since are
        counted again, and placement is tried only when the count reaches the gang's size (it cannot succeed
        below it: no node takes more instances than it has room for)."""
        self._track(base, excluded)
        shape, count = _Shape(item, skip), item.instance_count
        key = (*shape.key(), count)
        memo = self._no_fit.pop(key, None)
        if memo is not None:
            since, total, caps = memo
            for node_id in set(self._log[since:]):
                n = base.nodes[node_id]
                if n.rg != shape.rg:
                    continue
                c, was = shape.cap(n, count), caps.get(node_id, 0)
                if c != was:
                    total += c - was
                    if c:
                        caps[node_id] = c
                    else:
                        del caps[node_id]
            if total < count:
                self._no_fit[key] = (len(self._log), total, caps)
                return None
        fit = _fits(base, item, (), skip, keep)
        if fit is None:
            caps = {n.id: c for n in shape.able(base.in_group(shape.rg)) if (c := shape.cap(n, count))}
            self._no_fit[key] = (len(self._log), sum(caps.values()), caps)
        return fit

    def stamp(self, node_id: str) -> int:
        return self._stamp.get(node_id, 0)

    def parts(self, r: Running) -> tuple[Part, ...]:
        """``r``'s share of every node it holds, one entry per instance."""
        got = self._parts.get(id(r))
        if got is None:
            cpu, mem = cpu_milli(r.item.request.cpu), mem_mib(r.item.request.memory_gib)
            got = self._parts[id(r)] = tuple((a.node_id, cpu, mem, a.cards) for a in r.assignment)
        return got

    def cards(self, r: Running) -> tuple[tuple[str, int], ...]:
        """How many cards ``r`` holds on each node."""
        got = self._cards.get(id(r))
        if got is None:
            per_node: dict[str, int] = {}
            for a in r.assignment:
                per_node[a.node_id] = per_node.get(a.node_id, 0) + len(a.cards)
            got = self._cards[id(r)] = tuple(per_node.items())
        return got

    def candidates(self, preemptor: Item, excluded: Container[str]) -> list[Running]:
        """Same list as ``candidates``: the eligible victims are a prefix of the group's preference order."""
        return [r for r, _ in self.eligible(preemptor, excluded)]

    def end(self, preemptor: Item) -> int:
        """How many of the group's victims (a prefix of its order) have a strictly lower priority."""
        keys = self.keys.get(preemptor.resource_group)
        return bisect_left(keys, (-preemptor.priority,), key=lambda k: (k[0],)) if keys else 0

    def eligible(self, preemptor: Item, excluded: Container[str]) -> Iterator[tuple[Running, int]]:
        """The candidates in order, lazily, each with the most cards it holds on one node: the search
        mostly stops at the first few, so the (long) tail is never walked."""
        rs = self.by_rg.get(preemptor.resource_group)
        if not rs:
            return
        keys, spans = self.keys[preemptor.resource_group], self.spans[preemptor.resource_group]
        end = bisect_left(keys, (-preemptor.priority,), key=lambda k: (k[0],))
        for i in range(self.start(preemptor.resource_group, excluded), end):
            if keys[i][1] not in excluded:
                yield rs[i], spans[i]

    def start(self, rg: str, excluded: Container[str]) -> int:
        """The first position of ``rg``'s order not in ``excluded``. Victims are taken from the front of the
        order, so a cycle's growing set of victims makes a growing excluded prefix: the position is kept
        for the same ``excluded`` object (which may only grow meanwhile) and moves forward only."""
        if excluded is not self._excluded:
            self._excluded, self._starts = excluded, {}
        keys = self.keys.get(rg, ())
        p = self._starts.get(rg, 0)
        while p < len(keys) and keys[p][1] in excluded:
            p += 1
        self._starts[rg] = p
        return p


_UNBOUNDED = 1 << 62


class _Shape:
    """One instance of a request on the nodes of its group, minus ``skip``: how many a node can take, and how
    that grows as the group's victims holding some of it leave (in the group's order)."""

    __slots__ = ("rg", "cpu", "mem", "t", "k", "need", "skip")

    def __init__(self, item: Item, skip: Container[str]) -> None:
        req = item.request
        self.rg, self.skip = item.resource_group, skip
        self.cpu, self.mem, self.t = cpu_milli(req.cpu), mem_mib(req.memory_gib), req.gpu_type
        self.k, self.need = req.whole_cards, (req.gpu_tenths if req.fractional else 0)

    def key(self) -> tuple[object, ...]:
        skip = self.skip if isinstance(self.skip, (frozenset, tuple)) else frozenset(self.skip)  # type: ignore[call-overload]
        return (self.rg, self.cpu, self.mem, self.t, self.k, self.need, skip)

    def able(self, group: Group) -> Sequence[FreeNode]:
        """The nodes whose cards could hold an instance at all (every other node takes 0)."""
        if self.k:
            return group.with_whole(self.t, self.k)
        if self.need:
            return group.with_room(self.t, self.need)
        return group

    def cap(self, n: FreeNode, count: int) -> int:
        """Instances node ``n`` can take now (0 when it is not usable), at most ``count``."""
        if not n.schedulable or n.id in self.skip:
            return 0
        c = count
        if self.k:
            c = min(c, n.whole.get(self.t, 0) // self.k)
        elif self.need:
            if self.t not in n.shareable:
                return 0
            c = min(c, sum(f // self.need for f in n.free.get(self.t, ())))
        if self.cpu:
            c = min(c, n.cpu // self.cpu)
        if self.mem:
            c = min(c, n.mem // self.mem)
        return max(0, c)

    def steps(self, index: VictimIndex, n: FreeNode, excluded: Container[str], end: int, count: int, held: int,
              first_only: bool = False) -> list[tuple[int, int]]:
        """(position, instances gained) each time ``n``, taking ``held`` now, can take more as the victims
        holding some of it (positions below ``end``, not excluded) leave in order; at most ``count`` in all.
        ``n`` is left as it was."""
        out: list[tuple[int, int]] = []
        if held >= count or not n.schedulable or n.id in self.skip:
            return out
        rs, keys = index.by_rg[self.rg], index.keys[self.rg]
        moved: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
        try:
            for p in index.on_node(self.rg).get(n.id, ()):
                if p >= end:
                    break
                if keys[p][1] in excluded:
                    continue
                for node_id, cpu, mem, cards in index.parts(rs[p]):
                    if node_id == n.id:
                        n.shift(cpu, mem, cards, +1)
                        moved.append((cpu, mem, cards))
                c = self.cap(n, count)
                if c > held:
                    out.append((p, c - held))
                    held = c
                    if first_only or c >= count:
                        break
        finally:
            for cpu, mem, cards in moved:
                n.shift(cpu, mem, cards, -1)
        return out

    def first_gain(self, index: VictimIndex, n: FreeNode, excluded: Container[str]) -> int | None:
        if n.rg != self.rg or n.id not in index.on_node(self.rg):
            return None
        got = self.steps(index, n, excluded, _UNBOUNDED, _UNBOUNDED, self.cap(n, _UNBOUNDED), first_only=True)
        return got[0][0] if got else None


class _Room:
    """How many instances of ``item`` each node of ``base`` can take, re-counted only where victims leave.
    ``place_gang`` succeeds exactly when these counts add up to ``item.instance_count``."""

    def __init__(self, base: FreeState, item: Item, skip: Container[str], index: VictimIndex) -> None:
        self.shape = shape = _Shape(item, skip)
        self.base, self.rg, self.skip, self.index = base, item.resource_group, skip, index
        self.count = item.instance_count
        self.cpu, self.mem, self.t, self.k, self.need = shape.cpu, shape.mem, shape.t, shape.k, shape.need
        self.cap0: dict[str, int] = {}
        # nothing fits on ``base`` (checked first), so a single instance has no room anywhere yet
        self.total0 = 0 if self.count == 1 else sum(self.base_cap(n) for n in shape.able(base.in_group(self.rg)))

    def cap(self, n: FreeNode) -> int:
        """Instances node ``n`` can take now (0 when it is not usable), at most ``count``."""
        return self.shape.cap(n, self.count)

    def base_cap(self, n: FreeNode) -> int:
        """What ``n`` takes on ``base`` (0 everywhere for a single instance: nothing fits on ``base``)."""
        c = self.cap0.get(n.id)
        if c is None:
            c = self.cap0[n.id] = 0 if self.count == 1 else self.cap(n)
        return c

    def node(self, node_id: str) -> FreeNode | None:
        n = self.base.nodes.get(node_id)
        return n if n is not None and n.rg == self.rg else None

    def move(self, r: Running, sign: int) -> set[str]:
        """Release (+1) or take back (-1) victim ``r`` on ``base``; the usable nodes it touches."""
        touched = set()
        for node_id, cpu, mem, cards in self.index.parts(r):
            n = self.node(node_id)
            if n is not None:
                if sign > 0:
                    self.base_cap(n)  # counted before anything left it
                n.shift(cpu, mem, cards, sign)  # every move is undone before the search returns
                touched.add(node_id)
        return touched

    def gain(self, victims: Sequence[Running]) -> int:
        """Extra instances the pool could take once ``victims`` left (``base`` is restored)."""
        touched: set[str] = set()
        for r in victims:
            touched |= self.move(r, +1)
        try:
            return sum(self.cap(n) - self.base_cap(n) for n in (self.base.nodes[i] for i in touched))
        finally:
            for r in victims:
                self.move(r, -1)

    def may_gain(self, r: Running) -> bool:
        """False when releasing ``r`` alone surely cannot make room for the gang: with whole cards, each node it
        touches gains at most (whole cards free + cards ``r`` holds there) // k - what that node already takes."""
        if not self.k:
            return True
        most = 0
        for node_id, cards in self.index.cards(r):
            n = self.node(node_id)
            if n is None or not n.schedulable or n.id in self.skip:
                continue
            most += max(0, min(self.count, (n.whole.get(self.t, 0) + cards) // self.k) - self.base_cap(n))
        return self.total0 + most >= self.count

    def fits(self, victims: Sequence[Running]) -> bool:
        return self.total0 + self.gain(victims) >= self.count


def _fits(base: FreeState, item: Item, evict: Sequence[Running], skip: Container[str],
          keep: bool = False) -> Assignment | None:
    """Where ``item`` would go once ``evict`` left ``base``; ``base`` is released, tried and restored in place
    (``keep``, without evictions only: what it found stays taken). Nothing fits on ``base`` itself, so a single
    instance can only land on a node the evictions touch."""
    for r in evict:
        base.release(r)
    try:
        if item.instance_count == 1 and evict:
            ids = sorted({a.node_id for r in evict for a in r.assignment if a.node_id in base.nodes})
            nodes = [base.nodes[i] for i in ids if base.nodes[i].rg == item.resource_group]
        else:
            nodes = base.in_group(item.resource_group)
        fit = place_gang(nodes, item.request, item.instance_count, skip)
        if fit is not None and not (keep and not evict):
            base.apply(item.request, fit, +1)
        return fit
    finally:
        for r in evict:
            base.release(r, sign=-1)


def find_victims(
    base: FreeState, item: Item, running: Sequence[Running], excluded: Container[str], skip: Container[str] = (),
    index: VictimIndex | None = None, take: bool = False,
) -> Plan | None:
    """The minimal victim set that lets ``item`` fit on ``base`` (the pool as it will be once work already
    being evicted has left), or None when evicting every eligible victim would still not make room.
    ``Plan.victims`` is empty when the pending evictions alone make room (``take``: its assignment is then
    left taken on ``base``; else ``base`` is left as it was). ``index``: ``VictimIndex(running)``,
    built once and reused while ``running`` is unchanged; calls sharing an index and the same ``excluded``
    object may only add to it in between (the cycle's set of chosen victims)."""
    if index is not None:
        fit = index.direct_fit(base, item, skip, excluded, take)
    else:
        fit = _fits(base, item, (), skip, take)
    if fit is not None:
        return Plan((), fit)
    if index is None:
        index = VictimIndex(running)
    def cands() -> Iterator[tuple[Running, int]]:
        return index.eligible(item, excluded)

    if next(cands(), None) is None:
        return None
    room = _Room(base, item, skip, index)
    chosen = _search(room, cands, item, excluded)
    if chosen is None:
        return None
    fit = _fits(base, item, chosen, skip)
    assert fit is not None
    return Plan(tuple(chosen), fit)


def _first_single_whole(room: _Room, item: Item, excluded: Container[str]) -> Running | None:
    """The first candidate (in preference order) that alone makes room for a whole-card item.

    A victim holding one node n alone is enough exactly when the cards it holds there reach
    k * (deficit + what n takes now) - whole cards free on n (``_Room.may_gain``'s test, per node), so at
    least k * deficit minus the most whole cards free on any node; a victim holding several nodes must free
    at least k minus that on one of them. The scan reads the index's
    arrays directly; after ``SINGLES_BOUND_AFTER`` candidates it stops unless some node has a victim
    holding enough cards there."""
    index, rg, k = room.index, room.rg, room.k
    rs = index.by_rg.get(rg)
    if not rs:
        return None
    keys, spans, one_node = index.keys[rg], index.spans[rg], index.one_node[rg]
    group = room.base.in_group(rg)
    deficit, never = room.count - room.total0, k * (room.count + 1) + 1
    max_whole = group.max_whole(room.t)
    least = k - max_whole
    # a victim holding one node n needs >= k * deficit - whole free on n >= k * deficit - the most anywhere
    least_one = k * deficit - max_whole
    needs: dict[str, int] = {}

    def need_of(node_id: str) -> int:
        v = needs.get(node_id)
        if v is None:
            n = room.node(node_id)
            v = never
            if n is not None and n.schedulable and n.id not in room.skip:
                b = room.base_cap(n)
                if deficit + b <= room.count:
                    v = k * (deficit + b) - n.whole.get(room.t, 0)
            needs[node_id] = v
        return v

    bounded = not index.multi_node.get(rg, False)
    first = index.start(rg, excluded)
    for i in range(first, index.end(item)):
        if i - first == SINGLES_BOUND_AFTER and bounded:
            # need_of(n) <= most cards on n implies n has >= k * deficit - (most anywhere) whole cards free
            most = index.node_most
            floor = max(0, k * deficit - index.most_anywhere)
            if not any(most.get(n.id, 0) >= need_of(n.id) for n in group.with_whole(room.t, floor)):
                return None
        held = one_node[i]
        if spans[i] < (least if held is None else least_one) or keys[i][1] in excluded:
            continue
        if held is not None:
            v = needs.get(held[0])
            if held[1] < (need_of(held[0]) if v is None else v):
                continue
        elif not room.may_gain(rs[i]):
            continue
        if room.fits((rs[i],)):
            return rs[i]
    return None


def _in_order(room: _Room, item: Item, excluded: Container[str]) -> list[Running] | None:
    """Adding the eligible victims in order until the gang fits stops at the first position P where the
    instances the nodes gain add up to what is missing; each node's gains depend only on the victims holding
    some of it (``_Shape.steps``), and only the nodes whose first gain comes by P can gain by P, so they are
    taken from the index's first-gain heap in order, not by walking every candidate. Returns, in order, the
    victims up to P that hold some of a node gaining by P (the others, which the drop pass would remove
    without changing any node's count, left out), or None when even every eligible victim is not enough."""
    index, base, shape = room.index, room.base, room.shape
    heap = index.first_gains(shape, base, excluded)
    end = index.end(item)
    deficit = room.count - room.total0
    events: list[tuple[int, int, str]] = []
    popped: list[tuple[int, str, int]] = []
    stop: int | None = None
    try:
        while heap:
            first, node_id, stamp = heap[0]
            if stamp != index.stamp(node_id):
                heapq.heappop(heap)  # stale: the node's current entry is in the heap too (if it can gain)
                continue
            if first >= end or (stop is not None and first > stop):
                break
            heapq.heappop(heap)
            n = base.nodes[node_id]
            now = shape.first_gain(index, n, excluded)  # the position may be stale-small: put it right
            if now is not None:
                popped.append((now, node_id, stamp))
            got = shape.steps(index, n, excluded, end, room.count, room.base_cap(n))
            if got:
                events.extend((p, g, node_id) for p, g in got)
                events.sort()
                total, stop = 0, None
                for p, g, _ in events:
                    total += g
                    if total >= deficit:
                        stop = p
                        break
    finally:
        for entry in popped:
            heapq.heappush(heap, entry)
    if stop is None:
        return None
    rg = room.rg
    keys, on_node = index.keys[rg], index.on_node(rg)
    gaining = {node_id for p, _, node_id in events if p <= stop}
    walked = sorted({p for node_id in gaining for p in on_node[node_id] if p <= stop and keys[p][1] not in excluded})
    return [index.by_rg[rg][p] for p in walked]


def _search(
    room: _Room, cands: Callable[[], Iterator[tuple[Running, int]]], item: Item, excluded: Container[str]
) -> list[Running] | None:
    if room.k:
        single = _first_single_whole(room, item, excluded)
        if single is not None:
            return [single]
    else:
        for r, _ in cands():  # the first single victim that is enough
            if room.fits((r,)):
                return [r]
    first = [r for r, _ in islice(cands(), PAIR_SEARCH_MAX + 1)]
    if len(first) <= PAIR_SEARCH_MAX:
        for pair in combinations(first, 2):  # in preference order
            if room.fits(pair):
                return list(pair)
    # add victims in order until the gang fits (none fits: even all of them are not enough), keeping them released
    walked = _in_order(room, item, excluded)
    if walked is None:
        return None
    caps: dict[str, int] = {}
    total = room.total0
    chosen: list[Running] = []
    try:
        for r in walked:
            chosen.append(r)
            for i in room.move(r, +1):
                n = room.base.nodes[i]
                new = room.cap(n)
                total += new - caps.get(i, room.cap0[i])
                caps[i] = new
        assert total >= room.count
        # drop, last added first, every victim the gang can do without
        kept = [True] * len(chosen)
        for pos in range(len(chosen) - 1, -1, -1):
            r = chosen[pos]
            touched = room.move(r, -1)
            changed = {i: room.cap(room.base.nodes[i]) for i in touched}
            after = total + sum(c - caps[i] for i, c in changed.items())
            if after >= room.count:
                kept[pos] = False
                total = after
                caps.update(changed)
            else:
                room.move(r, +1)
        chosen = [r for r, k in zip(chosen, kept, strict=True) if k]
        return chosen
    finally:
        for r in chosen:
            room.move(r, -1)
