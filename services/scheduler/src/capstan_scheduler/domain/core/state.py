"""The mutable free-capacity view a cycle decides on (Kueue's snapshot): built from a Snapshot, copied to simulate."""

from __future__ import annotations

from collections.abc import Iterable

from .model import TENTHS_PER_CARD, InstanceAssignment, Node, Request, Running, cpu_milli, mem_mib


class FreeNode:
    """Free CPU (millicores), memory (MiB) and per-card free tenths of one node."""

    __slots__ = ("id", "rg", "schedulable", "cpu", "mem", "free", "index", "where", "whole", "shareable")

    def __init__(self, node: Node | None = None) -> None:
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


class FreeState:
    """Free capacity of every node, after subtracting what runs."""

    def __init__(self, nodes: dict[str, FreeNode]) -> None:
        self.nodes = nodes
        self._by_rg: dict[str, list[FreeNode]] | None = None

    @classmethod
    def build(cls, nodes: Iterable[Node], running: Iterable[Running]) -> FreeState:
        state = cls({n.id: FreeNode(n) for n in sorted(nodes, key=lambda n: n.id)})
        for r in running:
            state.release(r, sign=-1)
        return state

    def copy(self, rg: str | None = None) -> FreeState:
        return FreeState({k: n.copy() for k, n in self.nodes.items() if rg is None or n.rg == rg})

    def in_group(self, rg: str) -> list[FreeNode]:
        if self._by_rg is None:
            self._by_rg = {}
            for n in self.nodes.values():
                self._by_rg.setdefault(n.rg, []).append(n)
        return self._by_rg.get(rg, [])

    def apply(self, request: Request, assignment: Iterable[InstanceAssignment], sign: int) -> None:
        cpu, mem = cpu_milli(request.cpu), mem_mib(request.memory_gib)
        for inst in assignment:
            node = self.nodes.get(inst.node_id)
            if node is not None:
                node.apply(cpu, mem, inst.cards, sign)

    def release(self, running: Running, sign: int = 1) -> None:
        self.apply(running.item.request, running.assignment, sign)
