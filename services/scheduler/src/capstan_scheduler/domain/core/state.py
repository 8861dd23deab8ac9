"""The mutable free-capacity view a cycle decides on (Kueue's snapshot): built from a Snapshot, copied to simulate.

A FreeState also keeps, per (resource group, card type), which nodes have how many whole free cards and how
much room their roomiest card has; every ``FreeNode.apply`` keeps it current. Placement asks it for the nodes
that can hold a request (``Group.with_whole`` / ``Group.with_room``) instead of walking every node, which is
what makes a cycle over thousands of mostly full nodes fast. The answers are the same: placement picks the
best node by a key that ends with the node id, so visiting only the nodes that qualify changes nothing.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable

from .model import TENTHS_PER_CARD, InstanceAssignment, Node, Request, Running, cpu_milli, mem_mib


class FreeNode:
    """Free CPU (millicores), memory (MiB) and per-card free tenths of one node."""

    __slots__ = ("id", "rg", "schedulable", "cpu", "mem", "free", "index", "where", "whole", "shareable", "owner",
                 "ver")

    def __init__(self, node: Node | None = None) -> None:
        self.owner: FreeState | None = None  # the state whose index follows this node's changes
        self.ver = 0  # grows with every change: marks this node's entry in the CPU heap stale
        if node is None:
            return
        self.id = node.id
        self.rg = node.resource_group
        self.schedulable = node.schedulable
        self.cpu = cpu_milli(node.cpu)
        self.mem = mem_mib(node.memory_gib)
        self.shareable = node.shareable
        self.free: dict[str, list[int]] = {}
        self.index: dict[str, list[int]] = {}
        self.where: dict[int, tuple[str, int]] = {}
        for card in sorted(node.cards, key=lambda c: c.index):
            self.free.setdefault(card.type, []).append(TENTHS_PER_CARD)
            pos = self.index.setdefault(card.type, [])
            self.where[card.index] = (card.type, len(pos))
            pos.append(card.index)
        self.whole: dict[str, int] = {t: len(v) for t, v in self.free.items()}

    def copy(self) -> FreeNode:
        c = FreeNode()
        c.id, c.rg, c.schedulable, c.cpu, c.mem = self.id, self.rg, self.schedulable, self.cpu, self.mem
        c.shareable, c.index, c.where = self.shareable, self.index, self.where
        c.free = {t: list(v) for t, v in self.free.items()}
        c.whole = dict(self.whole)
        return c

    def fits_cpu_mem(self, cpu: int, mem: int) -> bool:
        return self.cpu >= cpu and self.mem >= mem

    def apply(self, cpu: int, mem: int, cards: Iterable[tuple[int, int]], sign: int) -> None:
        """Take (sign=-1) or give back (sign=+1) one instance's resources."""
        owner = self.owner
        if owner is None:
            self.shift(cpu, mem, cards, sign)
            self.ver += 1
            return
        cards = tuple(cards)
        where = self.where
        types = list(dict.fromkeys(where[idx][0] for idx, _ in cards if idx in where))
        for t in types:
            owner.unindex(self, t)  # out of the index before the change, back in after it
        self.shift(cpu, mem, cards, sign)
        self.ver += 1
        for t in types:
            owner.index_node(self, t)
        owner.changed(self)

    def shift(self, cpu: int, mem: int, cards: Iterable[tuple[int, int]], sign: int) -> None:
        """``apply`` without telling the owner's index: only for a change that is undone (the same call with
        the other sign) before anything reads the index again (the victim search's trial releases)."""
        self.cpu += sign * cpu
        self.mem += sign * mem
        for idx, tenths in cards:
            loc = self.where.get(idx)
            if loc is None:
                continue
            t, pos = loc
            free = self.free[t]
            before = free[pos]
            free[pos] = before + sign * tenths
            if before == TENTHS_PER_CARD:
                self.whole[t] -= 1
            if free[pos] == TENTHS_PER_CARD:
                self.whole[t] += 1

    def room(self, card_type: str) -> int:
        """Free tenths on this node's roomiest card of ``card_type`` (0 when none)."""
        return max(self.free.get(card_type) or (0,))


_NO_IDS: set[str] = set()
HEAP_SKIP_MAX = 32  # refused nodes the CPU heap looks past before the caller walks every node
MEM_HEAPS = 8  # CPU heaps per group for as many memory sizes asked (beyond them, the heap of every node)


class Group(list[FreeNode]):
    """The nodes of one resource group (in id order), with the state's index for fast candidate lookups."""

    def __init__(self, nodes: Iterable[FreeNode], state: FreeState, rg: str) -> None:
        super().__init__(nodes)
        self.state, self.rg = state, rg

    def with_whole(self, card_type: str, k: int) -> list[FreeNode]:
        """Nodes with at least ``k`` whole free cards of ``card_type`` (any order)."""
        return self.state.nodes_at_least(self.state.whole_index, self.rg, card_type, k)

    def partial_ids(self, card_type: str) -> set[str]:
        """Ids of nodes with a card of ``card_type`` that is partly used (neither whole nor full)."""
        return self.state.partial_index.get((self.rg, card_type), _NO_IDS)

    def partial(self, card_type: str) -> list[FreeNode]:
        nodes = self.state.nodes
        return [nodes[i] for i in sorted(self.partial_ids(card_type))]

    def with_room(self, card_type: str, tenths: int) -> list[FreeNode]:
        """Nodes with a card of ``card_type`` that has at least ``tenths`` free (any order)."""
        return self.state.nodes_at_least(self.state.room_index, self.rg, card_type, tenths)

    def first_whole(self, card_type: str, k: int, ok: Callable[[FreeNode], bool]) -> FreeNode | None:
        """The accepted node with the fewest whole free cards that are at least ``k``, lowest id first."""
        buckets = self.state.whole_index.get((self.rg, card_type))
        if not buckets:
            return None
        nodes = self.state.nodes
        for w in sorted(w for w in buckets if w >= k):
            for node_id in buckets[w]:
                n = nodes[node_id]
                if ok(n):
                    return n
        return None

    def most_cpu(self, cpu: int, ok: Callable[[FreeNode], bool], mem: int = 0) -> tuple[FreeNode | None, bool]:
        """The accepted node with the most free CPU (then memory, then lowest id) that has ``cpu`` free,
        and whether the heap decided it (see ``FreeState.most_cpu``); ``mem``: ``ok`` accepts no node with
        less free memory."""
        return self.state.most_cpu(self.rg, cpu, ok, mem)

    def max_whole(self, card_type: str) -> int:
        buckets = self.state.whole_index.get((self.rg, card_type))
        return max((w for w, ids in buckets.items() if ids), default=0) if buckets else 0


class FreeState:
    """Free capacity of every node, after subtracting what runs."""

    def __init__(self, nodes: dict[str, FreeNode], indexed: bool = True) -> None:
        self.nodes = nodes
        self._by_rg: dict[str, Group] | None = None
        # (resource group, card type) -> whole free cards / most free tenths on one card -> node ids (sorted)
        self.whole_index: dict[tuple[str, str], dict[int, list[str]]] = {}
        self.room_index: dict[tuple[str, str], dict[int, list[str]]] = {}
        self.partial_index: dict[tuple[str, str], set[str]] = {}
        # (group, least free memory) -> heap of the nodes that had that much when their entry was pushed
        self._cpu_heaps: dict[tuple[str, int], list[tuple[int, int, str, int]]] = {}
        self.log: list[str] | None = None  # ids of the nodes changed since ``watch`` (with repeats)
        if indexed:
            self.index_all()

    def most_cpu(self, rg: str, cpu: int, ok: Callable[[FreeNode], bool], mem: int = 0) -> tuple[FreeNode | None, bool]:
        """A heap of (-free CPU, -free memory, id, version): every change of a node pushes its current entry
        (once the heap exists), and an entry whose version is not the node's is dropped when it surfaces.
        Returns (node or None, decided); not decided when more than ``HEAP_SKIP_MAX`` nodes near the top
        were refused (many reserved nodes): the caller then walks every node. With ``mem`` (up to
        ``MEM_HEAPS`` values per group), the heap holds only nodes with that much memory free, so nodes whose
        CPU is free but memory is not (CPU-only work beside a card-bound task) never crowd its top."""
        key = (rg, mem)
        heap = self._cpu_heaps.get(key)
        if heap is None:
            if mem and sum(1 for g, _ in self._cpu_heaps if g == rg) >= MEM_HEAPS:
                key, mem = (rg, 0), 0
                heap = self._cpu_heaps.get(key)
            if heap is None:
                heap = self._cpu_heaps[key] = [(-n.cpu, -n.mem, n.id, n.ver) for n in self.nodes.values()
                                               if n.rg == rg and n.mem >= mem]
                heapq.heapify(heap)
        held = []
        found = None
        while heap:
            _, _, node_id, ver = heap[0]
            n = self.nodes[node_id]
            if ver != n.ver:
                heapq.heappop(heap)  # stale: the node's current entry is in the heap too
                continue
            if n.cpu < cpu:
                break  # the most free CPU is not enough: no node has it
            if ok(n):
                found = n
                break
            held.append(heapq.heappop(heap))
            if len(held) > HEAP_SKIP_MAX:
                break
        for entry in held:
            heapq.heappush(heap, entry)
        return found, len(held) <= HEAP_SKIP_MAX

    def changed(self, n: FreeNode) -> None:
        """Node ``n`` changed (through ``FreeNode.apply``)."""
        for (rg, mem), heap in self._cpu_heaps.items():
            if rg == n.rg and n.mem >= mem:
                heapq.heappush(heap, (-n.cpu, -n.mem, n.id, n.ver))
        if self.log is not None:
            self.log.append(n.id)

    def watch(self) -> list[str]:
        """From now on, every node changed through ``FreeNode.apply`` is appended to the list returned (the
        same list on later calls): what keeps a cache over this state (the victim search's) current."""
        if self.log is None:
            self.log = []
        return self.log

    def index_all(self) -> None:
        for n in self.nodes.values():
            n.owner = self
            for t in n.free:
                self.index_node(n, t)

    def index_node(self, n: FreeNode, t: str) -> None:
        insort(self.whole_index.setdefault((n.rg, t), {}).setdefault(n.whole[t], []), n.id)
        insort(self.room_index.setdefault((n.rg, t), {}).setdefault(n.room(t), []), n.id)
        if sum(n.free[t]) != TENTHS_PER_CARD * n.whole[t]:  # some card is partly used
            self.partial_index.setdefault((n.rg, t), set()).add(n.id)

    def unindex(self, n: FreeNode, t: str) -> None:
        for bucket in (self.whole_index[(n.rg, t)][n.whole[t]], self.room_index[(n.rg, t)][n.room(t)]):
            i = bisect_left(bucket, n.id)
            if i < len(bucket) and bucket[i] == n.id:
                del bucket[i]
        partial = self.partial_index.get((n.rg, t))
        if partial is not None:
            partial.discard(n.id)

    def nodes_at_least(self, index: dict[tuple[str, str], dict[int, list[str]]], rg: str, t: str, least: int) -> list[FreeNode]:
        buckets = index.get((rg, t))
        if not buckets:
            return []
        return [self.nodes[i] for w, ids in buckets.items() if w >= least for i in ids]

    @classmethod
    def build(cls, nodes: Iterable[Node], running: Iterable[Running]) -> FreeState:
        state = cls({n.id: FreeNode(n) for n in sorted(nodes, key=lambda n: n.id)}, indexed=False)
        for r in running:
            state.release(r, sign=-1)
        state.index_all()  # once, after what runs is subtracted
        return state

    def copy(self, rg: str | None = None) -> FreeState:
        return FreeState({k: n.copy() for k, n in self.nodes.items() if rg is None or n.rg == rg})

    def in_group(self, rg: str) -> Group:
        if self._by_rg is None:
            by_rg: dict[str, list[FreeNode]] = {}
            for n in self.nodes.values():
                by_rg.setdefault(n.rg, []).append(n)
            self._by_rg = {g: Group(ns, self, g) for g, ns in by_rg.items()}
        got = self._by_rg.get(rg)
        return got if got is not None else Group((), self, rg)

    def apply(self, request: Request, assignment: Iterable[InstanceAssignment], sign: int) -> None:
        cpu, mem = cpu_milli(request.cpu), mem_mib(request.memory_gib)
        for inst in assignment:
            node = self.nodes.get(inst.node_id)
            if node is not None:
                node.apply(cpu, mem, inst.cards, sign)

    def release(self, running: Running, sign: int = 1) -> None:
        self.apply(running.item.request, running.assignment, sign)
