"""The simulator's trace format (docs/simulation.md): JSON Lines, one record per line, ``"type"`` first.

Records: ``trace`` (header, optional), ``resource_group`` (id + SPEC §7.1 policy JSON), ``node`` and
``workload``. Readers ignore unknown keys and blank lines / lines starting with ``#``. Also here: a converter
from a simple published CPU-only trace (CSV ``submit_time,duration,cpus,memory``) to this format.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan_core.errors import InvalidArgument
from capstan_scheduler.domain.core import Card, Node, Request
from capstan_scheduler.domain.core.model import TENTHS_PER_CARD
from capstan_scheduler.domain.policy import validate_policy

FORMAT_VERSION = 1
DEFAULT_POLICY: dict[str, Any] = {
    "Version": "1.0", "ResourceRule": {"DefaultPriority": 0, "DefaultQueue": 0, "Preempted": 0}, "TaskRules": [],
}


class TraceError(ValueError):
    """A trace line that cannot be read; the message names the line and the field."""


@dataclass(frozen=True)
class GroupSpec:
    id: str
    policy: Mapping[str, Any]


@dataclass(frozen=True)
class NodeSpec:
    id: str
    resource_group: str
    cpu: float
    memory_gib: float
    cards: Mapping[str, int] = field(default_factory=dict)  # card type -> count
    shareable: tuple[str, ...] = ()
    join: float | None = None  # seconds from the origin when the node starts taking work; None: from the start
    leave: float | None = None  # seconds from the origin when it stops taking new work; None: never

    def to_node(self) -> Node:
        cards: list[Card] = []
        for t in sorted(self.cards):
            cards.extend(Card(len(cards), t) for _ in range(self.cards[t]))
        return Node(self.id, self.resource_group, self.cpu, self.memory_gib, tuple(cards), frozenset(self.shareable))


@dataclass(frozen=True)
class WorkloadSpec:
    id: str
    kind: str  # training | service
    resource_group: str
    submit: float  # seconds from the trace's origin
    run_time: float  # seconds of work (an evicted task keeps what it has done)
    cpu: float
    memory_gib: float
    gpu_type: str = ""
    gpu: float = 0.0  # 0, 0.1..1 in steps of 0.1, or whole cards above 1
    count: int = 1
    priority: int | None = None  # explicit P0..P9; None -> from tags and the group's policy
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def gpu_tenths(self) -> int:
        return round(self.gpu * TENTHS_PER_CARD)

    def request(self) -> Request:
        t = self.gpu_tenths
        return Request(self.cpu, self.memory_gib, self.gpu_type if t else "", t)


@dataclass
class Trace:
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    nodes: list[NodeSpec] = field(default_factory=list)
    workloads: list[WorkloadSpec] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def policy(self, rg: str) -> Mapping[str, Any]:
        g = self.groups.get(rg)
        return g.policy if g is not None else DEFAULT_POLICY

    def with_policy(self, policy: Mapping[str, Any], rg: str | None = None) -> Trace:
        """The same trace with ``policy`` for group ``rg`` (every group when None): the what-if replay."""
        ids = set(self.groups) | {n.resource_group for n in self.nodes} if rg is None else {rg}
        groups = dict(self.groups)
        for g in ids:
            groups[g] = GroupSpec(g, policy)
        return Trace(groups, list(self.nodes), list(self.workloads), dict(self.meta))


# ---------------------------------------------------------------------------------------------- write


def _record(obj: GroupSpec | NodeSpec | WorkloadSpec) -> dict[str, Any]:
    if isinstance(obj, GroupSpec):
        return {"type": "resource_group", "id": obj.id, "policy": obj.policy}
    if isinstance(obj, NodeSpec):
        rec: dict[str, Any] = {"type": "node", "id": obj.id, "resource_group": obj.resource_group, "cpu": float(obj.cpu),
                               "memory_gib": float(obj.memory_gib), "cards": dict(obj.cards)}
        if obj.shareable:
            rec["shareable"] = list(obj.shareable)
        if obj.join is not None:
            rec["join"] = float(obj.join)
        if obj.leave is not None:
            rec["leave"] = float(obj.leave)
        return rec
    rec = {"type": "workload", "id": obj.id, "kind": obj.kind, "resource_group": obj.resource_group,
           "submit": float(obj.submit), "run_time": float(obj.run_time), "cpu": float(obj.cpu),
           "memory_gib": float(obj.memory_gib)}
    if obj.gpu:
        rec["gpu_type"], rec["gpu"] = obj.gpu_type, float(obj.gpu)
    if obj.count != 1:
        rec["count"] = obj.count
    if obj.priority is not None:
        rec["priority"] = obj.priority
    if obj.tags:
        rec["tags"] = dict(obj.tags)
    return rec


def dump_lines(trace: Trace) -> Iterator[str]:
    yield json.dumps({"type": "trace", "version": FORMAT_VERSION, **trace.meta}, sort_keys=True)
    objs: list[GroupSpec | NodeSpec | WorkloadSpec] = [*trace.groups.values(), *trace.nodes, *trace.workloads]
    for obj in objs:
        yield json.dumps(_record(obj), sort_keys=True)


def dumps(trace: Trace) -> str:
    return "".join(line + "\n" for line in dump_lines(trace))


def save(trace: Trace, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in dump_lines(trace):
            f.write(line + "\n")


# ----------------------------------------------------------------------------------------------- read


def _req(rec: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in rec:
        raise TraceError(f"{where}: missing field {key!r}")
    return rec[key]


def _num(rec: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    v = rec.get(key, default) if default is not None else _req(rec, key, where)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise TraceError(f"{where}: {key} must be a number >= 0")
    return float(v)


def _workload(rec: Mapping[str, Any], where: str) -> WorkloadSpec:
    kind = rec.get("kind", "training")
    if kind not in ("training", "service"):
        raise TraceError(f"{where}: kind must be 'training' or 'service'")
    gpu = _num(rec, "gpu", where, 0.0)
    tenths = round(gpu * TENTHS_PER_CARD)
    if abs(gpu * TENTHS_PER_CARD - tenths) > 1e-6 or (tenths > TENTHS_PER_CARD and tenths % TENTHS_PER_CARD):
        raise TraceError(f"{where}: gpu must be 0.1..1 in steps of 0.1 or a whole number of cards")
    gpu_type = str(rec.get("gpu_type", ""))
    if tenths and not gpu_type:
        raise TraceError(f"{where}: gpu_type is required when gpu > 0")
    prio = rec.get("priority")
    if prio is not None and (not isinstance(prio, int) or not 0 <= prio <= 9):
        raise TraceError(f"{where}: priority must be an integer 0..9")
    count = rec.get("count", 1)
    if not isinstance(count, int) or count < 1:
        raise TraceError(f"{where}: count must be an integer >= 1")
    tags = rec.get("tags", {})
    if not isinstance(tags, dict):
        raise TraceError(f"{where}: tags must be an object")
    return WorkloadSpec(
        id=str(_req(rec, "id", where)), kind=kind, resource_group=str(rec.get("resource_group", "default")),
        submit=_num(rec, "submit", where), run_time=_num(rec, "run_time", where), cpu=_num(rec, "cpu", where, 0.0),
        memory_gib=_num(rec, "memory_gib", where, 0.0), gpu_type=gpu_type if tenths else "", gpu=gpu,
        count=count, priority=prio, tags={str(k): str(v) for k, v in tags.items()},
    )


def _node(rec: Mapping[str, Any], where: str) -> NodeSpec:
    cards = rec.get("cards", {})
    if not isinstance(cards, dict) or any(not isinstance(v, int) or v < 0 for v in cards.values()):
        raise TraceError(f"{where}: cards must map a card type to a count")
    shareable = rec.get("shareable", [])
    if not isinstance(shareable, list):
        raise TraceError(f"{where}: shareable must be a list of card types")
    join = _num(rec, "join", where) if rec.get("join") is not None else None
    leave = _num(rec, "leave", where) if rec.get("leave") is not None else None
    if join is not None and leave is not None and leave <= join:
        raise TraceError(f"{where}: leave must be after join")
    return NodeSpec(str(_req(rec, "id", where)), str(rec.get("resource_group", "default")), _num(rec, "cpu", where),
                    _num(rec, "memory_gib", where), {str(k): v for k, v in cards.items()},
                    tuple(sorted(str(s) for s in shareable)), join, leave)


def json_lines(lines: Iterable[str], source: str) -> Iterator[tuple[str, Any]]:
    """(``source:line``, decoded value) per non-blank, non-comment line; bad JSON names its line."""
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{n}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{where}: not JSON ({e.msg})") from None


def parse_lines(lines: Iterable[str], source: str = "<trace>") -> Trace:
    trace = Trace()
    seen: set[str] = set()
    for where, rec in json_lines(lines, source):
        if not isinstance(rec, dict):
            raise TraceError(f"{where}: a record must be a JSON object")
        kind = rec.get("type")
        if kind == "trace":
            trace.meta.update({k: v for k, v in rec.items() if k not in ("type", "version")})
        elif kind == "resource_group":
            policy = _req(rec, "policy", where)
            try:
                policy = validate_policy(policy)
            except InvalidArgument as e:
                raise TraceError(f"{where}: {e}") from None
            gid = str(_req(rec, "id", where))
            trace.groups[gid] = GroupSpec(gid, policy)
        elif kind == "node":
            trace.nodes.append(_node(rec, where))
        elif kind == "workload":
            w = _workload(rec, where)
            if w.id in seen:
                raise TraceError(f"{where}: duplicate workload id {w.id!r}")
            seen.add(w.id)
            trace.workloads.append(w)
        else:
            raise TraceError(f"{where}: type must be trace, resource_group, node or workload")
    return trace


def loads(text: str) -> Trace:
    return parse_lines(text.splitlines())


def load(path: str | Path) -> Trace:
    with open(path, encoding="utf-8") as f:
        return parse_lines(f, str(path))


# ------------------------------------------------------------------------------------------ converter


def from_cpu_csv(
    text: str | io.TextIOBase, *, nodes: int = 100, node_cpu: float = 64, node_memory_gib: float = 256,
    memory_unit_gib: float = 1.0, resource_group: str = "default", policy: Mapping[str, Any] | None = None,
) -> Trace:
    """A published CPU-only trace as CSV ``submit_time,duration,cpus,memory`` (header row required, extra
    columns ignored; an optional ``id`` and ``priority`` column are used when present).

    Mapping: ``submit_time`` (s) -> submit, relative to the earliest row; ``duration`` (s) -> run_time;
    ``cpus`` -> cpu; ``memory`` x ``memory_unit_gib`` -> memory_gib; gpu 0; kind training; count 1.
    Such traces carry no machines, so ``nodes`` identical CPU-only nodes are declared. Rows with a
    negative/absent duration or a request larger than one node are dropped (recorded in meta)."""
    reader = csv.DictReader(io.StringIO(text) if isinstance(text, str) else text)
    rows = []
    dropped = 0
    for n, row in enumerate(reader):
        try:
            submit, dur = float(row["submit_time"]), float(row["duration"])
            cpu, mem = float(row["cpus"]), float(row["memory"]) * memory_unit_gib
        except (KeyError, TypeError, ValueError):
            dropped += 1
            continue
        if dur < 0 or submit < 0 or cpu < 0 or mem < 0 or cpu > node_cpu or mem > node_memory_gib:
            dropped += 1
            continue
        prio_raw = (row.get("priority") or "").strip()
        prio = int(prio_raw) if prio_raw.isdigit() and int(prio_raw) <= 9 else None
        rows.append((submit, n, (row.get("id") or "").strip() or f"job-{n:06d}", dur, cpu, mem, prio))
    rows.sort()
    t0 = rows[0][0] if rows else 0.0
    trace = Trace(meta={"source": "cpu-csv", "dropped_rows": dropped})
    trace.groups[resource_group] = GroupSpec(resource_group, dict(policy or DEFAULT_POLICY))
    width = max(4, len(str(nodes - 1)))
    trace.nodes = [NodeSpec(f"cpu-{i:0{width}d}", resource_group, node_cpu, node_memory_gib) for i in range(nodes)]
    trace.workloads = [
        WorkloadSpec(jid, "training", resource_group, round(submit - t0, 6), dur, cpu, mem, priority=prio)
        for submit, _, jid, dur, cpu, mem, prio in rows
    ]
    return trace
