"""Which resource groups' scheduling input changed since the last cycle: what makes cycles incremental.

A group's decisions are a pure function of its plan (policy, nodes, running work and queue, all read
models; ``now`` only stamps the events), so a group whose input has not changed since a cycle that appended
nothing for it would be decided the same way again, with nothing to append: the cycle skips it. What
changes a group is learned from the events the scheduler's read models apply (``ProjectionRunner.on_batch``,
on the event loop): its id is in the event, or the workload's group is known from its submission or an
earlier read. Anything this cannot place (an unknown workload, a node's state, a type it does not know)
marks every group, and so does a failed cycle; the cycle also re-decides every group every
``FULL_EVERY_S`` as a safety net.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from capstan_core.contracts.scheduling import (
    JOIN_TOKEN,
    NODE,
    RSG,
    WORKLOAD,
    NodeJoined,
    ResourceGroupCreated,
    ResourceGroupDeleted,
    ResourceGroupUpdated,
    WorkloadQueued,
    WorkloadRejected,
    WorkloadReleased,
    WorkloadSubmitted,
)
from capstan_core.eventstore import RecordedEvent

FULL_EVERY_S = 60.0
# Events that change no group's plan (reports, health records, join tokens, the trainer's own states).
NO_CHANGE = frozenset({
    "TrainingInstanceStarted", "TrainingInstanceExited", "TrainingTaskPreempting", "TrainingTaskRestarting",
    "TrainingTaskStopRequested", "NodeHealthChecked", "JoinTokenCreated", "JoinTokenUsed", "JoinTokenRevoked",
})
# What the scheduler reads from other owners' subjects (the workload contract, and a task's requeue request);
# any other event there is the owner's own business and changes no group.
FOREIGN_INPUT = frozenset({"WorkloadSubmitted", "WorkloadWithdrawn", "TrainingTaskRequeued"})
OWN_KINDS = frozenset({RSG, NODE, WORKLOAD, JOIN_TOKEN})
# Workload events whose workload leaves the scheduler's view for good (its group is then forgotten here).
_FINAL = (WorkloadRejected, WorkloadReleased)


class Changes:
    def __init__(self) -> None:
        self._all = True  # the first cycle decides every group
        self._dirty: set[str] = set()
        self._group_of: dict[str, str] = {}  # workload id -> its resource group
        self._own: set[tuple[str, str]] = set()  # (workload id, event type) the cycle itself appends

    def on_batch(self, _position: int, records: Sequence[RecordedEvent]) -> None:
        for r in records:
            if r.event.TYPE in FOREIGN_INPUT or _kind_of(r.subject) in OWN_KINDS:
                self._note(r.event)
            # else: an event of another owner's aggregate that the scheduler does not read

    def _note(self, e: Any) -> None:
        if e.TYPE in NO_CHANGE:
            return
        own = (getattr(e, "workload_id", None), e.TYPE)
        if own in self._own:  # what a cycle decided and appended: its group's decisions still hold
            self._own.discard(own)  # type: ignore[arg-type]
            return
        if isinstance(e, (ResourceGroupCreated, ResourceGroupUpdated, ResourceGroupDeleted)):
            self._dirty.add(e.rg_id)
        elif isinstance(e, NodeJoined):
            self._dirty.add(e.resource_group_id)
        elif isinstance(e, WorkloadSubmitted):
            self._group_of[e.workload_id] = e.resource_group_id
            self._dirty.add(e.resource_group_id)
        elif isinstance(e, WorkloadQueued):
            self._group_of[e.workload_id] = e.resource_group_id
            self._dirty.add(e.resource_group_id)
        else:
            found = getattr(e, "workload_id", None) or getattr(e, "task_id", None)
            group = self._group_of.get(found) if isinstance(found, str) else None
            if group is None or not isinstance(found, str):
                self._all = True  # a node's state, an unknown workload or event type: every group
                return
            self._dirty.add(group)
            if isinstance(e, _FINAL):
                del self._group_of[found]

    def expect(self, decisions: Iterable[tuple[str, str]]) -> None:
        """The cycle is about to append these (workload id, event type) decisions: a group's own decisions
        do not make it change (deciding it again on the result gives nothing more to append; the benchmark
        ``scripts/bench_cycle.py`` checks it with a cycle from scratch after each)."""
        self._own.update(decisions)

    def forget_expected(self) -> None:
        """Decisions expected but never seen (their append failed: their groups are marked instead)."""
        self._own.clear()

    def learn(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Workloads' groups, from a read of the read models."""
        for w in rows:
            self._group_of[w["id"]] = w["resource_group_id"]

    def take(self) -> set[str] | None:
        """The groups changed since the last take (None: every group), and start afresh."""
        dirty = None if self._all else self._dirty
        self._all, self._dirty = False, set()
        return dirty

    def mark(self, groups: set[str] | None) -> None:
        """Decide these groups again next cycle (None: every group)."""
        if groups is None:
            self._all = True
        else:
            self._dirty |= groups


def union(a: set[str] | None, b: set[str] | None) -> set[str] | None:
    return None if a is None or b is None else a | b


def _kind_of(subject: str) -> str:
    """The aggregate kind of ``capstan.evt.<kind>.<id>``; any other subject counts as the scheduler's own."""
    parts = subject.split(".")
    return parts[2] if len(parts) >= 4 and parts[:2] == ["capstan", "evt"] else "workload"
