"""The pure scheduling core (SPEC §7): model, placement, queues, preemption and explanations. No I/O."""

from .cycle import schedule
from .model import (
    CPU_LANE,
    Card,
    Decisions,
    InstanceAssignment,
    Item,
    LaneSummary,
    Node,
    Preemption,
    Queued,
    Request,
    Running,
    Snapshot,
)
from .placement import place_gang
from .preemption import Plan, find_victims
from .priority import preemption_on, priority_for, queue_mode
from .state import FreeState

__all__ = [
    "CPU_LANE", "Card", "Decisions", "FreeState", "InstanceAssignment", "Item", "LaneSummary", "Node", "Plan",
    "Preemption", "Queued", "Request", "Running", "Snapshot", "find_victims", "place_gang", "preemption_on",
    "priority_for", "queue_mode", "schedule",
]
