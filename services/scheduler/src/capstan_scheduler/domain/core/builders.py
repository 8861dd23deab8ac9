"""Terse builders for pools and workloads (tests, the simulator and benchmarks)."""

from __future__ import annotations

from .model import Card, InstanceAssignment, Item, Node, Request, Running


def node(nid: str, cards: int = 8, card_type: str = "A100", *, cpu: float = 64, mem: float = 512,
         shareable: bool = False, rg: str = "rg", state: str = "Running") -> Node:
    return Node(nid, rg, cpu, mem, tuple(Card(i, card_type) for i in range(cards)),
                frozenset({card_type}) if shareable else frozenset(), state)


def item(iid: str, tenths: int = 10, card_type: str = "A100", *, prio: int = 5, seq: int = 0, kind: str = "training",
         count: int = 1, cpu: float = 1, mem: float = 1, rg: str = "rg") -> Item:
    req = Request(cpu, mem, card_type if tenths else "", tenths)
    return Item(iid, kind, rg, prio, seq, req, count)  # type: ignore[arg-type]


def running(it: Item, node_id: str, cards: tuple[int, ...] = (), *, started: int = 0, tenths: int = 10,
            evicting: bool = False) -> Running:
    return Running(it, (InstanceAssignment(node_id, tuple((c, tenths) for c in cards)),), started, evicting)
