"""Why each queued item waits, in words, and free capacity per lane (total, whole-machine free, fragments)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import CPU_LANE, TENTHS_PER_CARD, Item, LaneSummary, Queued, Snapshot, mem_mib
from .state import FreeNode, FreeState


@dataclass(frozen=True)
class Why:
    """What the cycle found for a queued item; ``explain`` turns it into words."""

    kind: str  # fifo | priority_block | no_fit | waiting_victims
    blocker: str = ""
    blocker_priority: int = 0
    preemption: str = ""  # off | no_victims
    victims: tuple[str, ...] = ()


def _frac(tenths: int) -> str:
    return f"{tenths / TENTHS_PER_CARD:g}"


def _num(x: float) -> str:
    return f"{x:g}"


def _best(nodes: list[FreeNode], score: dict[str, int]) -> tuple[int, str]:
    """Highest positive score, ties to the lowest node id (nodes come sorted); (0, '') when none is positive."""
    best = (0, "")
    for n in nodes:
        if score[n.id] > best[0]:
            best = (score[n.id], n.id)
    return best


def _largest(snapshot: Snapshot, rg: str, t: str, memo: dict[object, Any]) -> int:
    """The most cards of type ``t`` on one node of ``rg``."""
    key = ("largest", rg, t)
    got = memo.get(key)
    if got is None:
        got = memo[key] = max((n.card_count(t) for n in snapshot.nodes if n.resource_group == rg), default=0)
    return int(got)


def _need(item: Item, free: FreeState, snapshot: Snapshot, memo: dict[object, Any]) -> str:
    req, rg, t = item.request, item.resource_group, item.request.gpu_type
    nodes = [n for n in free.in_group(rg) if n.schedulable]
    gang = f"{item.instance_count} instances, all at once, each " if item.instance_count > 1 else ""
    if req.gpu_tenths == 0:
        score = {n.id: n.cpu for n in nodes}
        cpu, node = _best(nodes, score)
        most = f"most free CPU is {_num(cpu / 1000)} (node {node})" if node else "no schedulable node in the group"
        return f"{gang}needs {_num(req.cpu)} CPU and {_num(req.memory_gib)} GiB; {most}"
    if req.fractional:
        shared = [n for n in nodes if t in n.shareable]
        score = {n.id: max(n.free.get(t, [0])) for n in shared}
        room, node = _best(shared, score)
        if not shared:
            return f"{gang}needs {_frac(req.gpu_tenths)} of a {t} card; no node in the group shares {t}"
        most = f"most free on one card is {_frac(room)} (node {node})" if node else f"no free {t} capacity"
        text = f"{gang}needs {_frac(req.gpu_tenths)} of a shareable {t} card; {most}"
        return text + ("; CPU or memory falls short there" if room >= req.gpu_tenths else "")
    k = req.whole_cards
    biggest = _largest(snapshot, rg, t, memo)
    if biggest < k:
        return f"{gang}needs {k} x {t} on one node; no node in the group has that many (largest has {biggest})"
    block, node = _best(nodes, {n.id: n.whole.get(t, 0) for n in nodes})
    most = f"largest free block is {block} (node {node})" if node else f"no free {t} card"
    text = f"{gang}needs {k} x {t} on one node; {most}"
    if block >= k:
        cpu, mem = round(req.cpu * 1000), mem_mib(req.memory_gib)
        if item.instance_count == 1 or any(n.whole.get(t, 0) >= k and not n.fits_cpu_mem(cpu, mem) for n in nodes):
            text += "; CPU or memory falls short on the nodes with room"
        else:
            text += f"; too few such blocks for {item.instance_count} instances"
    return text


def _running_by_lane(snapshot: Snapshot) -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(priority, kind) of the work running in each lane that is not being evicted."""
    out: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for r in snapshot.running:
        if not r.evicting:
            out.setdefault(r.item.lane, []).append((r.item.priority, r.item.kind))
    return out


def _preemption_words(item: Item, why: Why, running: dict[tuple[str, str], list[tuple[int, str]]]) -> str:
    if why.preemption == "off":
        return "; preemption is off"
    here = running.get(item.lane, [])
    top = min((p for p, _ in here), default=None)
    if top is not None and top < item.priority:
        return f"; priority P{item.priority} below running P{top} work"
    if top is not None and top == item.priority:
        return f"; priority P{item.priority} not above running P{top} work"
    lower = [kind for p, kind in here if p > item.priority]
    if lower and all(kind == "service" for kind in lower):
        return "; the lower-priority work here is services, which are never preempted"
    return "; evicting lower-priority training would not make room"


def reason(item: Item, why: Why, free: FreeState, snapshot: Snapshot, memo: dict[object, Any] | None = None) -> str:
    if why.kind == "fifo":
        return f"blocked by strict FIFO behind {why.blocker}"
    if why.kind == "priority_block":
        return f"blocked behind higher-priority {why.blocker} (P{why.blocker_priority}); backfill only within a priority"
    if why.kind == "waiting_victims":
        if not why.victims:
            return "waiting for evicted work to leave"
        return f"waiting for {len(why.victims)} preempted task(s) to leave: {', '.join(why.victims)}"
    memo = {} if memo is None else memo
    key = (item.resource_group, item.request, item.instance_count, item.priority, why.preemption)
    if key not in memo:
        need_key = ("need", item.resource_group, item.request, item.instance_count)  # the same at every priority
        if need_key not in memo:
            memo[need_key] = _need(item, free, snapshot, memo)
        running = memo.get("running by lane")
        if running is None:
            running = memo["running by lane"] = _running_by_lane(snapshot)
        memo[key] = memo[need_key] + _preemption_words(item, why, running)
    return str(memo[key])


def lane_summaries(snapshot: Snapshot, free: FreeState) -> tuple[LaneSummary, ...]:
    lanes = {(n.resource_group, c.type) for n in snapshot.nodes for c in n.cards}
    lanes |= {i.lane for i in snapshot.pending if i.lane[1] != CPU_LANE}
    out = []
    for rg, t in sorted(lanes):
        total = sum(n.card_count(t) for n in snapshot.nodes if n.resource_group == rg)
        whole = frag = 0
        for n in free.in_group(rg):
            cards = n.free.get(t)
            if not n.schedulable or not cards:
                continue
            if n.whole[t] == len(cards):
                whole += len(cards)
            else:
                frag += sum(cards)
        out.append(LaneSummary(rg, t, total, whole, frag))
    return tuple(out)


def explain(
    snapshot: Snapshot, free: FreeState, why: Mapping[str, Why]
) -> tuple[dict[str, Queued], tuple[LaneSummary, ...]]:
    """Queued items (in lane order, with 1-based positions and reasons) and the per-lane summary."""
    queued: dict[str, Queued] = {}
    position: dict[tuple[str, str], int] = {}
    memo: dict[object, Any] = {}
    for item in sorted((i for i in snapshot.pending if i.id in why), key=lambda i: (i.lane, i.order_key)):
        position[item.lane] = position.get(item.lane, 0) + 1
        text = reason(item, why[item.id], free, snapshot, memo)
        queued[item.id] = Queued(item.id, item.lane, position[item.lane], text)
    return queued, lane_summaries(snapshot, free)
