"""The scheduler cycle's copy of the active workloads (queued, placed or being evicted, not ended) and their
allocations, kept between cycles and brought up to date by reading only the rows changed since the last read.

Every write of the scheduler's projection to a workload row records the stream position of its event
(``workloads.changed_seq``, migration 0010); the projection applies the log in order and commits each batch
whole, so once a read has seen position S, every row changed at or before S was in it, and the next read asks
only for ``changed_seq > S``. Allocations change only with their workload's row (placed, requeued, released),
so they are read again for the rows that changed. Rows written around the projection (the scale tests' set-up)
carry position 0: a read from scratch (``reset``; the cycle's first, its safety net, a failed cycle's next)
takes them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, select

from .tables import allocations, workloads

ACTIVE = frozenset({"queued", "placed", "evicting"})
_CHUNK = 500  # ids per IN (...) when reading allocations


class ActiveWork:
    def __init__(self) -> None:
        self._by_group: dict[str, dict[str, dict[str, Any]]] = {}  # group -> workload id -> row
        self._group_of: dict[str, str] = {}
        self._allocs: dict[str, list[dict[str, Any]]] = {}
        self._seen = -1

    def refresh(self, conn: Connection, reset: bool = False) -> int:
        """Read what changed since the last refresh (everything when ``reset``); how many rows were read."""
        if reset:
            self._by_group, self._group_of, self._allocs, self._seen = {}, {}, {}, -1
        changed = [dict(r) for r in conn.execute(select(workloads).where(workloads.c.changed_seq > self._seen))
                   .mappings()]
        if not changed:
            return 0
        active = [w for w in changed if w["status"] in ACTIVE and not w["ended"]]
        ids = [w["id"] for w in active]
        held: dict[str, list[dict[str, Any]]] = {}
        for i in range(0, len(ids), _CHUNK):
            for a in conn.execute(select(allocations).where(allocations.c.workload_id.in_(ids[i:i + _CHUNK])))\
                    .mappings():
                held.setdefault(a["workload_id"], []).append(dict(a))
        for w in changed:
            self._forget(w["id"])
        for w in active:
            self._group_of[w["id"]] = w["resource_group_id"]
            self._by_group.setdefault(w["resource_group_id"], {})[w["id"]] = w
            if w["id"] in held:
                self._allocs[w["id"]] = held[w["id"]]
        self._seen = max(self._seen, max(int(w["changed_seq"]) for w in changed))
        return len(changed)

    def _forget(self, workload_id: str) -> None:
        group = self._group_of.pop(workload_id, None)
        if group is not None:
            rows = self._by_group[group]
            rows.pop(workload_id, None)
            if not rows:
                del self._by_group[group]
        self._allocs.pop(workload_id, None)

    def of(self, groups: Iterable[str]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
        """The active workload rows of ``groups`` in submission order, and their allocations."""
        rows: list[Mapping[str, Any]] = [w for g in groups for w in self._by_group.get(g, {}).values()]
        rows.sort(key=lambda w: w["submitted_seq"])
        return rows, [a for w in rows for a in self._allocs.get(w["id"], ())]
