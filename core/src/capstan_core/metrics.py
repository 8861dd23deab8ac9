"""Counters a process keeps about itself: messages set aside from the event log, control-loop failures.

Each service holds one ``Counters`` (in its ``ServiceContext``) and shows it through the ``Admin`` gRPC
service; an agent holds its own. Counters are plain monotonic integers keyed by a name and labels; they
are bumped from the event loop and from worker threads (projection batches, the scheduling cycle), so
every access takes a lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# What the event log's readers set aside (labels: projection, kind).
QUARANTINED = "quarantined_commits"
# Commits a command's load of an aggregate skipped because they do not decode (label: kind).
SKIPPED_ON_LOAD = "skipped_commits_on_load"
# Control loops (label: loop): steps run, steps that failed as a whole, items set aside inside a step.
LOOP_STEPS = "loop_steps"
LOOP_STEP_FAILURES = "loop_step_failures"
LOOP_ITEM_FAILURES = "loop_item_failures"

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: int


class Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], int] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def get(self, name: str, **labels: str) -> int:
        """The sum of every counter called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        with self._lock:
            return sum(v for (n, ls), v in self._values.items() if n == name and want <= set(ls))

    def samples(self) -> list[Sample]:
        with self._lock:
            items = sorted(self._values.items())
        return [Sample(name, dict(labels), value) for (name, labels), value in items]
