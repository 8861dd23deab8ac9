"""Read models -> the scheduling core's snapshot (pure conversion; the cycle and the queue view share it).

Cards of a node get indices 0..n-1 over its card types in name order; on a real machine they are
the CUDA device indices the agent hands the instance.

A row that cannot be converted never stops the conversion of the others (issue #7): a queued workload's
row is set aside in its group's plan (``unusable``: the cycle rejects it with the error); a group whose
policy, nodes or running work cannot be converted gets an ``error`` instead of a snapshot, and nothing is
decided for it until it can (its resources would be unknown).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from .domain.core import Card, InstanceAssignment, Item, Node, Request, Running, Snapshot, priority_for, queue_mode

T = TypeVar("T")
DEFAULT_SHAREABLE = frozenset({"T4", "V100", "A100", "A10", "A800", "H100", "H800", "H200", "L20", "L40", "L40S"})


@dataclass(frozen=True)
class GroupPlan:
    """What one resource group's cycle decides on."""

    resource_group: str
    policy: Mapping[str, Any]
    mode: int
    snapshot: Snapshot
    items: Mapping[str, Item]
    unusable: Mapping[str, str] = field(default_factory=dict)  # queued workload id -> why it cannot be an item
    error: str = ""  # set: the group cannot be planned (its snapshot is empty)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


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


Tagging = tuple[int, tuple[tuple[str, str], ...]]  # (priority, sorted tags)


def item_of(w: Mapping[str, Any], policy: Mapping[str, Any], memo: dict[str, Tagging] | None = None) -> Item:
    """``memo``: the group's (priority, tags) by tag text, shared by the calls for one group and policy
    (50,000 queued items have few distinct tag sets)."""
    text = w["tags"] or "{}"
    tagging = memo.get(text) if memo is not None else None
    if tagging is None:
        tags = json.loads(text)
        tagging = (priority_for(policy, tags), tuple(sorted(tags.items())))
        if memo is not None:
            memo[text] = tagging
    return Item(
        id=w["id"], kind="service" if w["kind"] == "service" else "training", resource_group=w["resource_group_id"],
        priority=tagging[0], submit_seq=int(w["submitted_seq"]), request=request_of(w),
        instance_count=int(w["instance_count"]), tags=tagging[1], capability=w.get("capability") or "",
    )


def _shares(node: Mapping[str, Any], gpus: Mapping[str, int], shareable: frozenset[str]) -> frozenset[str]:
    """The card types a node splits: those fixed when it joined, else (older nodes) the current setting."""
    fixed = node.get("shareable")
    types = frozenset(json.loads(fixed)) if fixed is not None else shareable
    return frozenset(t for t in gpus if t in types)


def _node(n: Mapping[str, Any], shareable: frozenset[str]) -> Node:
    gpus = json.loads(n["gpus"])
    return Node(id=n["id"], resource_group=n["resource_group_id"], cpu=float(n["cpu"]), memory_gib=float(n["memory_gib"]),
                cards=cards_of(gpus), shareable=_shares(n, gpus, shareable), state=n["state"],
                capabilities=frozenset(json.loads(n.get("capabilities") or "[]")))


def _running(w: Mapping[str, Any], item: Item, allocs: list[Any]) -> Running:
    assignment = tuple(
        InstanceAssignment(node_id=a["node_id"], cards=tuple(tuple(c) for c in json.loads(a["cards"] or "[]")))
        for a in sorted(allocs, key=lambda a: a["idx"])
    )
    return Running(item=item, assignment=assignment, started_at=int(w["started_at_ms"] or 0),
                   evicting=w["status"] == "evicting")


class Reuse:
    """What earlier builds made from rows, for a build that meets the same row again (by value: every column,
    and the group's policy text for an item). An object no build met in the last ``KEEP_BUILDS`` is
    forgotten, so it holds about what the recent builds read (a cycle reads only its changed groups, and
    phases 1-2 only the groups they admit into). A cycle at 50,000 queued items rebuilt them all from rows
    that mostly had not changed."""

    KEEP_BUILDS = 8

    def __init__(self) -> None:
        self._made: dict[tuple[str, str], tuple[object, Any, int]] = {}  # -> (key, object, build last met)
        self._build = 0

    def get(self, kind: str, id_: str, key: object, make: Callable[[], T]) -> T:
        got = self._made.get((kind, id_))
        obj = got[1] if got is not None and got[0] == key else make()
        self._made[(kind, id_)] = (key, obj, self._build)
        return obj  # type: ignore[no-any-return]

    def done(self) -> None:
        """The end of a build: forget what the last ``KEEP_BUILDS`` builds did not meet."""
        self._build += 1
        oldest = self._build - self.KEEP_BUILDS
        if self._build % self.KEEP_BUILDS == 0:
            self._made = {k: v for k, v in self._made.items() if v[2] >= oldest}


def _row_key(row: Any) -> tuple[Any, ...]:
    return tuple(row.values())


def build_plans(
    groups: Iterable[Any],
    nodes: Iterable[Any],
    workloads: Iterable[Any],
    allocations: Iterable[Any],
    shareable: frozenset[str] = DEFAULT_SHAREABLE,
    reuse: Reuse | None = None,
) -> dict[str, GroupPlan]:
    """``workloads``: queued and placed ones; ``nodes``: the groups' nodes (every state: running work on a
    draining node still holds its resources); each workload goes only on nodes declaring its capability.
    ``reuse``: objects built from the same rows before (kept by the caller between builds)."""
    try:
        return _build_plans(groups, nodes, workloads, allocations, shareable, reuse or Reuse())
    finally:
        if reuse is not None:
            reuse.done()


def _build_plans(
    groups: Iterable[Any], nodes: Iterable[Any], workloads: Iterable[Any], allocations: Iterable[Any],
    shareable: frozenset[str], reuse: Reuse,
) -> dict[str, GroupPlan]:
    policy_text: dict[str, str] = {}
    policies: dict[str, dict[str, Any]] = {}
    modes: dict[str, int] = {}
    errors: dict[str, str] = {}
    for g in groups:
        policies[g["id"]] = {}
        policy_text[g["id"]] = g["policy"]
        try:
            policy = json.loads(g["policy"])
            modes[g["id"]] = queue_mode(policy)
            priority_for(policy, {})
            policies[g["id"]] = policy
        except Exception as e:
            errors[g["id"]] = f"its policy: {error_text(e)}"
    nodes_by_group: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        try:
            nodes_by_group[n["resource_group_id"]].append(
                reuse.get("node", n["id"], (_row_key(n), shareable), partial(_node, n, shareable)))
        except Exception as e:
            errors.setdefault(n["resource_group_id"], f"node {n['id']}: {error_text(e)}")
    allocs: dict[str, list[Any]] = defaultdict(list)
    for a in allocations:
        allocs[a["workload_id"]].append(a)
    running: dict[str, list[Running]] = defaultdict(list)
    pending: dict[str, list[Item]] = defaultdict(list)
    items: dict[str, dict[str, Item]] = defaultdict(dict)
    unusable: dict[str, dict[str, str]] = defaultdict(dict)
    memos: dict[str, dict[str, Tagging]] = defaultdict(dict)
    for w in workloads:
        rg = w["resource_group_id"]
        if rg not in policies or rg in errors:
            continue
        holds = w["status"] in ("placed", "evicting") and bool(allocs.get(w["id"]))
        try:
            row = _row_key(w)
            policy, memo = policies[rg], memos[rg]
            item = reuse.get("item", w["id"], (row, policy_text[rg]), partial(item_of, w, policy, memo))
            run = None
            if holds:
                mine = allocs[w["id"]]
                run = reuse.get("run", w["id"], (row, item, tuple(_row_key(a) for a in mine)),
                                partial(_running, w, item, mine))
        except Exception as e:
            if holds:  # what it holds is unknown: deciding for the group could overcommit its nodes
                errors[rg] = f"running workload {w['id']}: {error_text(e)}"
            elif w["status"] == "queued":
                unusable[rg][w["id"]] = error_text(e)
            continue
        items[rg][item.id] = item
        if run is not None:
            running[rg].append(run)
        elif w["status"] == "queued":
            pending[rg].append(item)
    return {
        rg: GroupPlan(resource_group=rg, policy=policy, mode=modes.get(rg, 0), snapshot=Snapshot(nodes=()), items={},
                      error=errors[rg])
        if rg in errors else
        GroupPlan(
            resource_group=rg, policy=policy, mode=modes[rg],
            snapshot=Snapshot(nodes=tuple(nodes_by_group[rg]), running=tuple(running[rg]), pending=tuple(pending[rg])),
            items=items[rg], unusable=unusable[rg],
        )
        for rg, policy in policies.items()
    }
