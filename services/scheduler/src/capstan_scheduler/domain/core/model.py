"""Value types of the scheduling core: pools, requests, items, running work and decisions.

Everything here is frozen and compared by value, so the same input gives equal output.
Resources are integers inside the core: CPU in millicores, memory in MiB, GPU in tenths of a card
(``gpu_tenths``: 1..9 a fraction of one shareable card, 10 or a multiple of 10 whole cards).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["training", "service"]
CPU_LANE = ""  # the card type of a CPU-only lane
TENTHS_PER_CARD = 10


def cpu_milli(cpu: float) -> int:
    return round(cpu * 1000)


def mem_mib(memory_gib: float) -> int:
    return round(memory_gib * 1024)


@dataclass(frozen=True)
class Card:
    """One accelerator of a node; each card holds 10 tenths."""

    index: int
    type: str


@dataclass(frozen=True)
class Node:
    """A node's capacity. ``shareable`` names the card types this node may split into tenths (SPEC §7.3)."""

    id: str
    resource_group: str
    cpu: float
    memory_gib: float
    cards: tuple[Card, ...] = ()
    shareable: frozenset[str] = frozenset()
    state: str = "Running"
    # What the node's agent can run ("training", "serving"): an item naming a capability goes only on
    # nodes declaring it.
    capabilities: frozenset[str] = frozenset()

    @property
    def schedulable(self) -> bool:
        return self.state == "Running"

    def card_count(self, card_type: str) -> int:
        return sum(1 for c in self.cards if c.type == card_type)


@dataclass(frozen=True)
class Request:
    """What one instance needs."""

    cpu: float
    memory_gib: float
    gpu_type: str = CPU_LANE
    gpu_tenths: int = 0

    def __post_init__(self) -> None:
        t = self.gpu_tenths
        if t < 0 or (t > TENTHS_PER_CARD and t % TENTHS_PER_CARD):
            raise ValueError("gpu_tenths must be 1..10 or a multiple of 10")
        if t and not self.gpu_type:
            raise ValueError("gpu_type is required with gpu_tenths")
        if not t and self.gpu_type:
            raise ValueError("gpu_type given without gpu_tenths")
        if self.cpu < 0 or self.memory_gib < 0:
            raise ValueError("cpu and memory_gib must be >= 0")

    @property
    def fractional(self) -> bool:
        return 0 < self.gpu_tenths < TENTHS_PER_CARD

    @property
    def whole_cards(self) -> int:
        return self.gpu_tenths // TENTHS_PER_CARD if self.gpu_tenths >= TENTHS_PER_CARD else 0

    @property
    def lane_type(self) -> str:
        return self.gpu_type if self.gpu_tenths else CPU_LANE


@dataclass(frozen=True)
class Item:
    """A training task or service waiting for (or holding) resources. Priority 0 is the highest."""

    id: str
    kind: Kind
    resource_group: str
    priority: int
    submit_seq: int
    request: Request
    instance_count: int = 1
    tags: tuple[tuple[str, str], ...] = ()
    capability: str = ""  # what a node must be able to run it ("training", "serving"); "": any node

    def __post_init__(self) -> None:
        if self.kind not in ("training", "service"):
            raise ValueError("kind must be 'training' or 'service'")
        if not 0 <= self.priority <= 9:
            raise ValueError("priority must be 0..9")
        if self.instance_count < 1:
            raise ValueError("instance_count must be >= 1")

    @property
    def lane(self) -> tuple[str, str]:
        return (self.resource_group, self.request.lane_type)

    @property
    def order_key(self) -> tuple[int, int, str]:
        return (self.priority, self.submit_seq, self.id)


@dataclass(frozen=True)
class InstanceAssignment:
    """Where one instance runs: a node and the (card index, tenths) it holds there."""

    node_id: str
    cards: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Running:
    """An item that holds resources. ``evicting``: already chosen as a victim, inside its grace period."""

    item: Item
    assignment: tuple[InstanceAssignment, ...]
    started_at: int
    evicting: bool = False


@dataclass(frozen=True)
class Snapshot:
    nodes: tuple[Node, ...]
    running: tuple[Running, ...] = ()
    pending: tuple[Item, ...] = ()


@dataclass(frozen=True)
class Preemption:
    victim_id: str
    preemptor_id: str


@dataclass(frozen=True)
class Queued:
    """An item left waiting: its 1-based position in its lane and why it waits, in words."""

    item_id: str
    lane: tuple[str, str]
    position: int
    reason: str


@dataclass(frozen=True)
class LaneSummary:
    """Free capacity of one (resource group, card type) lane, in cards."""

    resource_group: str
    card_type: str
    total_cards: int
    whole_machine_free_cards: int
    fragment_free_tenths: int

    @property
    def fragment_free_cards(self) -> float:
        return self.fragment_free_tenths / TENTHS_PER_CARD


@dataclass(frozen=True)
class Decisions:
    at: int
    placements: Mapping[str, tuple[InstanceAssignment, ...]] = field(default_factory=dict)
    preemptions: tuple[Preemption, ...] = ()
    queued: Mapping[str, Queued] = field(default_factory=dict)
    lanes: tuple[LaneSummary, ...] = ()
