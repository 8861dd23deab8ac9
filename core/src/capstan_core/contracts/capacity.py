"""What one node may declare, and so the most one instance may ask for.

Defined once, here: the scheduler refuses a node (JoinNode) declaring more, the trainer refuses a
task (CreateTrainingTask) asking more per instance than any node that could join holds, and the
gateway documents the same bounds in its OpenAPI schema. Every check is pure and raises
``InvalidArgument`` naming the field and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..errors import InvalidArgument

MAX_NODE_CPU = 4096  # cores one node may declare
MAX_NODE_MEMORY_GIB = 65536  # GiB (64 TiB)
MAX_NODE_CARDS = 64  # cards of one type on one node
MAX_NODE_CARD_TYPES = 16  # distinct card types on one node
MAX_CARD_TYPE_LEN = 64


def _number(value: float, field: str, limit: float, unit: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number, got {value}", field=field)
    if value > limit:
        raise InvalidArgument(
            f"{field} must be at most {limit:g} {unit}: no node may declare more (got {value:g})", field=field
        )


def check_card_type(card_type: str, field: str) -> None:
    if not card_type or len(card_type) > MAX_CARD_TYPE_LEN or not card_type.isprintable():
        raise InvalidArgument(f"{field} must be 1..{MAX_CARD_TYPE_LEN} printable characters", field=field)


def check_request(cpu: float, memory_gib: float, gpu_type: str, gpu: float, *, field: str = "resources") -> None:
    """One instance's request: finite, within what a node may hold, and a card type with cards (and
    the reverse). Whether cards come whole or in tenths is the owner's rule, checked after this."""
    _number(cpu, f"{field}.cpu", MAX_NODE_CPU, "cores")
    _number(memory_gib, f"{field}.memory_gib", MAX_NODE_MEMORY_GIB, "GiB")
    _number(gpu, f"{field}.gpu", MAX_NODE_CARDS, "cards")
    if cpu <= 0 or memory_gib <= 0:
        raise InvalidArgument(f"{field}.cpu and {field}.memory_gib must be > 0", field=field)
    if gpu < 0:
        raise InvalidArgument(f"{field}.gpu must be >= 0", field=f"{field}.gpu")
    if gpu > 0 and not gpu_type:
        raise InvalidArgument(f"{field}.gpu_type is required when {field}.gpu > 0", field=f"{field}.gpu_type")
    if gpu_type and gpu == 0:
        raise InvalidArgument(
            f"{field}.gpu_type {gpu_type[:MAX_CARD_TYPE_LEN]!r} is set but {field}.gpu is 0: ask for cards "
            f"(e.g. {field}.gpu=1) or leave {field}.gpu_type empty for CPU-only work",
            field=f"{field}.gpu",
        )
    if gpu_type:
        check_card_type(gpu_type, f"{field}.gpu_type")


def check_node_capacity(cpu: float, memory_gib: float, gpus: Mapping[str, int]) -> None:
    """What a joining node declares: finite, positive, and within the limits above."""
    _number(cpu, "cpu", MAX_NODE_CPU, "cores")
    _number(memory_gib, "memory_gib", MAX_NODE_MEMORY_GIB, "GiB")
    if cpu <= 0 or memory_gib <= 0:
        raise InvalidArgument("a node must offer cpu > 0 and memory_gib > 0", field="cpu")
    if len(gpus) > MAX_NODE_CARD_TYPES:
        raise InvalidArgument(f"a node may declare at most {MAX_NODE_CARD_TYPES} card types", field="gpus")
    for card_type, count in gpus.items():
        check_card_type(card_type, "gpus")
        if not 0 <= count <= MAX_NODE_CARDS:
            raise InvalidArgument(
                f"gpus[{card_type!r}] must be 0..{MAX_NODE_CARDS} cards (got {count})", field="gpus"
            )
