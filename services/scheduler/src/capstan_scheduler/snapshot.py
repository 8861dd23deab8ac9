"""Read models -> the scheduling core's snapshot (pure conversion; the cycle and the queue view share it).

Cards of a node get indices 0..n-1 over its card types in name order; on a real machine they are
the CUDA device indices the agent hands the instance.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .domain.core import Card, InstanceAssignment, Item, Node, Request, Running, Snapshot, priority_for, queue_mode

DEFAULT_SHAREABLE = frozenset({"T4", "V100", "A100", "A10", "A800", "H100", "H800", "H200", "L20", "L40", "L40S"})


@dataclass(frozen=True)
class GroupPlan:
    """What one resource group's cycle decides on."""

    resource_group: str
    policy: Mapping[str, Any]
    mode: int
    snapshot: Snapshot
    items: Mapping[str, Item]


def cards_of(gpus: Mapping[str, int]) -> tuple[Card, ...]:
    out: list[Card] = []
    for card_type in sorted(gpus):
        base = len(out)
        out.extend([Card(index=base + i, type=card_type) for i in range(int(gpus[card_type]))])
    return tuple(out)


def request_of(row: Mapping[str, Any]) -> Request:
    tenths = round(float(row["gpu"]) * 10)
    return Request(
        cpu=float(row["cpu"]), memory_gib=float(row["memory_gib"]), gpu_type=row["gpu_type"] if tenths else "",
        gpu_tenths=tenths,
    )


def item_of(w: Mapping[str, Any], policy: Mapping[str, Any]) -> Item:
    tags = json.loads(w["tags"] or "{}")
    return Item(
        id=w["id"], kind="service" if w["kind"] == "service" else "training", resource_group=w["resource_group_id"],
        priority=priority_for(policy, tags), submit_seq=int(w["submitted_seq"]), request=request_of(w),
        instance_count=int(w["instance_count"]), tags=tuple(sorted(tags.items())),
    )


def _shares(node: Mapping[str, Any], gpus: Mapping[str, int], shareable: frozenset[str]) -> frozenset[str]:
    """The card types a node splits: those fixed when it joined, else (older nodes) the current setting."""
    fixed = node.get("shareable")
    types = frozenset(json.loads(fixed)) if fixed is not None else shareable
    return frozenset(t for t in gpus if t in types)


def build_plans(
    groups: Iterable[Any],
    nodes: Iterable[Any],
    workloads: Iterable[Any],
    allocations: Iterable[Any],
    shareable: frozenset[str] = DEFAULT_SHAREABLE,
) -> dict[str, GroupPlan]:
    """``workloads``: queued and placed ones; ``nodes``: trainer nodes (every state: running work on a
    draining node still holds its resources)."""
    policies = {g["id"]: json.loads(g["policy"]) for g in groups}
    nodes_by_group: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        gpus = json.loads(n["gpus"])
        nodes_by_group[n["resource_group_id"]].append(
            Node(id=n["id"], resource_group=n["resource_group_id"], cpu=float(n["cpu"]),
                 memory_gib=float(n["memory_gib"]), cards=cards_of(gpus),
                 shareable=_shares(n, gpus, shareable), state=n["state"])
        )
    allocs: dict[str, list[Any]] = defaultdict(list)
    for a in allocations:
        allocs[a["workload_id"]].append(a)
    running: dict[str, list[Running]] = defaultdict(list)
    pending: dict[str, list[Item]] = defaultdict(list)
    items: dict[str, dict[str, Item]] = defaultdict(dict)
    for w in workloads:
        rg = w["resource_group_id"]
        if rg not in policies:
            continue
        item = item_of(w, policies[rg])
        items[rg][item.id] = item
        if w["status"] in ("placed", "evicting") and allocs.get(w["id"]):
            assignment = tuple(
                InstanceAssignment(node_id=a["node_id"], cards=tuple(tuple(c) for c in json.loads(a["cards"] or "[]")))
                for a in sorted(allocs[w["id"]], key=lambda a: a["idx"])
            )
            running[rg].append(Running(item=item, assignment=assignment, started_at=int(w["started_at_ms"] or 0),
                                       evicting=w["status"] == "evicting"))
        elif w["status"] == "queued":
            pending[rg].append(item)
    return {
        rg: GroupPlan(
            resource_group=rg, policy=policy, mode=queue_mode(policy),
            snapshot=Snapshot(nodes=tuple(nodes_by_group[rg]), running=tuple(running[rg]), pending=tuple(pending[rg])),
            items=items[rg],
        )
        for rg, policy in policies.items()
    }
